//! These run against a real server: `scripts/redis-server start DIR` starts
//! one and writes DIR/env with its coordinates.


use super::*;
use crate::config::Config;
use crate::store::{Expect, StoreError};
use crate::test_support::{conflict, unique};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the Redis test server is not running (scripts/redis-server start DIR; . DIR/env)")
    })
}

fn url() -> String {
    format!(
        "redis://:{}@{}:{}/0",
        env("DURATOM_TEST_REDIS_PASSWORD"),
        env("DURATOM_TEST_REDIS_HOST"),
        env("DURATOM_TEST_REDIS_PORT")
    )
}

fn config(key: &str) -> Config {
    config_with(key, &[])
}

fn config_with(key: &str, extra: &[(&str, &str)]) -> Config {
    let url = url();
    let mut pairs = vec![
        ("url", url.as_str()),
        ("endpoint", "test-redis"),
        ("key", key),
        ("timeout-ms", "2000"),
    ];
    pairs.extend_from_slice(extra);
    Config::from_pairs(BACKEND, &pairs)
}

crate::store_contract_tests!(|_: &std::path::Path, name: &str| config(name));

#[test]
fn the_version_is_what_redis_lua_computes() {
    // The compare runs in Lua (redis.sha1hex); our token must be the same.
    let key = unique("sha");
    let mut s = open(&config(&key)).unwrap();
    let v = s
        .commit("caf\u{e9} \u{1F600}".as_bytes(), &Expect::Anything { after: None })
        .unwrap();
    let client = redis::Client::open(url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let lua: String = redis::Script::new("return redis.sha1hex(redis.call('GET', KEYS[1]))")
        .key(&key)
        .invoke(&mut c)
        .unwrap();
    assert_eq!(v.0, lua);
    s.delete().unwrap();
}

#[test]
fn a_wrong_password_and_a_closed_port_fail_fast_and_never_show_the_password() {
    let port = env("DURATOM_TEST_REDIS_PORT");
    let bad = format!("redis://:not-the-password-xyz@127.0.0.1:{port}/0");
    let e = open(&Config::from_pairs(
        BACKEND,
        &[("url", &bad), ("endpoint", "e"), ("key", "k")],
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(!e.contains("not-the-password-xyz"), "{e}");
    assert!(
        e.to_lowercase().contains("auth") || e.contains("WRONGPASS"),
        "{e}"
    );
    let t0 = std::time::Instant::now();
    let closed = "redis://127.0.0.1:1/0";
    let e = open(&Config::from_pairs(
        BACKEND,
        &[
            ("url", closed),
            ("endpoint", "127.0.0.1:1/0"),
            ("key", "k"),
            ("timeout-ms", "1000"),
        ],
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cannot connect to 127.0.0.1:1/0"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    let e = open(&Config::from_pairs(
        BACKEND,
        &[("url", "redis://:secret-pw@[bad"), ("key", "k")],
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(!e.contains("secret-pw"), "{e}");
}

#[test]
fn a_killed_connection_is_replaced_on_the_next_call() {
    let key = unique("kill");
    let name = format!("duratom-kill-test-{}", std::process::id());
    let mut s = open(&config_with(&key, &[("client-name", &name)])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    let client = redis::Client::open(url()).unwrap();
    let mut admin = client.get_connection().unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    let id = list
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("our connection is listed under its name")
        .to_string();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    assert_eq!(s.load().unwrap().unwrap().bytes, b"1");
    s.commit(b"2", &Expect::Anything { after: None }).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"2");
    // A compare-and-set whose connection died under it runs again on a new
    // one (had the first run landed, the rerun would meet it and say the
    // outcome is unknown, never a false conflict). Here the server had closed
    // the connection, so nothing landed and the rerun does.
    let v2 = s.load().unwrap().unwrap().version;
    let id = client_id(&mut admin, &name);
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id).query(&mut admin).unwrap();
    let v3 = s.commit(b"3", &Expect::Version(v2.clone())).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"3");
    assert!(matches!(s.commit(b"4", &Expect::Version(v2)), Err(StoreError::Conflict { .. })), "a stale version is refused");
    s.commit(b"4", &Expect::Version(v3)).unwrap();
    s.delete().unwrap();
}

fn client_id(admin: &mut redis::Connection, name: &str) -> String {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(admin).unwrap();
    list.lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("our connection is listed under its name")
        .to_string()
}

#[test]
fn an_unknown_or_mistyped_key_is_an_error_at_open() {
    // Before any connection: the server need not be reachable for this.
    let e = open(&Config::from_pairs(BACKEND, &[("url", "redis://127.0.0.1:1/0"), ("key", "k"), ("timout-ms", "9")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("redis-db") && e.contains("unknown key `timout-ms`") && e.contains("timeout-ms"), "{e}");
    let e = open(&Config::from_pairs(BACKEND, &[("url", "redis://127.0.0.1:1/0"), ("key", "k"), ("timeout-ms", "soon")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`timeout-ms`: expected i64, got a string"), "{e}");
    let e = open(&Config::from_pairs(BACKEND, &[("key", "k")])).err().unwrap().to_string();
    assert!(e.contains("`url` is required"), "{e}");
}

/// The TLS port of the test server (scripts/redis-server serves both).
fn tls_url(host: &str) -> String {
    format!(
        "rediss://:{}@{host}:{}/0",
        env("DURATOM_TEST_REDIS_PASSWORD"),
        env("DURATOM_TEST_REDIS_TLS_PORT")
    )
}

fn tls_config(key: &str, host: &str, ca: Option<&str>) -> Config {
    let url = tls_url(host);
    let mut pairs = vec![("url", url.as_str()), ("endpoint", "test-redis-tls"), ("key", key), ("timeout-ms", "3000")];
    if let Some(ca) = ca {
        pairs.push(("tls-ca-cert-file", ca));
    }
    Config::from_pairs(BACKEND, &pairs)
}

#[test]
fn tls_round_trips_and_survives_a_reopen() {
    let ca = env("DURATOM_TEST_REDIS_CA");
    let key = unique("tls");
    let mut s = open(&tls_config(&key, "127.0.0.1", Some(&ca))).unwrap();
    let v1 = s.commit(b"{:over :tls}", &Expect::Nothing).unwrap();
    let v2 = s.commit(b"{:over :tls, :n 2}", &Expect::Version(v1.clone())).unwrap();
    assert!(conflict(s.commit(b"stale", &Expect::Version(v1))));
    drop(s);
    // A new connection (and handshake) finds what the first one wrote; so
    // does a plain connection to the same server's plain port.
    let mut again = open(&tls_config(&key, "localhost", Some(&ca))).unwrap();
    let got = again.load().unwrap().unwrap();
    assert_eq!((got.bytes.as_slice(), &got.version), (&b"{:over :tls, :n 2}"[..], &v2));
    let mut plain = open(&config(&key)).unwrap();
    assert_eq!(plain.load().unwrap().unwrap().version, v2);
    again.delete().unwrap();
    assert!(plain.load().unwrap().is_none());
    // The TLS port speaks only TLS: a plain client there gets no answer it
    // can read, so the connection above really was TLS.
    let plain_to_tls = format!(
        "redis://:{}@127.0.0.1:{}/0",
        env("DURATOM_TEST_REDIS_PASSWORD"),
        env("DURATOM_TEST_REDIS_TLS_PORT")
    );
    assert!(open(&Config::from_pairs(BACKEND, &[("url", &plain_to_tls), ("key", "k"), ("timeout-ms", "1000")])).is_err());
}

#[test]
fn tls_with_the_wrong_roots_or_host_is_refused_clearly() {
    let key = unique("tls-bad");
    let other_ca = env("DURATOM_TEST_REDIS_OTHER_CA");
    for ca in [Some(other_ca.as_str()), None] {
        let e = open(&tls_config(&key, "127.0.0.1", ca)).err().unwrap().to_string();
        assert!(
            e.contains("cannot connect to test-redis-tls")
                && e.contains("TLS handshake failed")
                && e.contains("does not chain to a trusted root"),
            "{ca:?}: {e}"
        );
        assert!(!e.contains(&env("DURATOM_TEST_REDIS_PASSWORD")), "{e}");
    }
    // 127.0.0.2 reaches the same server, but its certificate names only
    // 127.0.0.1 and localhost.
    let e = open(&tls_config(&key, "127.0.0.2", Some(&env("DURATOM_TEST_REDIS_CA")))).err().unwrap().to_string();
    assert!(e.contains("TLS handshake failed") && e.contains("does not name the host"), "{e}");
}

#[test]
fn tls_settings_that_cannot_work_are_errors_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let e = open(&tls_config("k", "127.0.0.1", Some(missing.to_str().unwrap()))).err().unwrap().to_string();
    assert!(e.contains("`tls-ca-cert-file`") && e.contains("no-such-ca.pem"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = open(&tls_config("k", "127.0.0.1", Some(junk.to_str().unwrap()))).err().unwrap().to_string();
    assert!(e.contains("`tls-ca-cert-file`") && e.contains("no PEM certificate"), "{e}");
    let e = open(&Config::from_pairs(
        BACKEND,
        &[("url", "redis://127.0.0.1:1/0"), ("key", "k"), ("tls-ca-cert-file", "/x.pem")],
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not rediss://"), "{e}");
    let e = open(&Config::from_pairs(BACKEND, &[("url", "http://127.0.0.1:1/0"), ("key", "k")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("must start with redis:// or rediss://"), "{e}");
}

/// A server that answers the first command of the first connection with
/// `+OK` and then nothing more, on that connection or any later one: a
/// process frozen with SIGSTOP after the duratom connected (the kernel
/// still accepts connections for it). Returns its port.
fn server_that_freezes_after_one_reply() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let answer = std::mem::take(&mut first);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut answer = answer;
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    if std::mem::take(&mut answer) {
                        let _ = conn.write_all(b"+OK\r\n");
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_frozen_server_fails_each_call_within_one_timeout() {
    let port = server_that_freezes_after_one_reply();
    let url = format!("redis://127.0.0.1:{port}/0");
    let timeout = std::time::Duration::from_millis(1500);
    let mut s = open(&Config::from_pairs(
        BACKEND,
        &[("url", url.as_str()), ("endpoint", "frozen"), ("key", "k"), ("timeout-ms", "1500")],
    ))
    .unwrap();
    // A load (safe to run again: a new connection is tried) and a
    // compare-and-set (the same) each meet the frozen kept connection, then
    // a frozen new one.
    let t0 = std::time::Instant::now();
    let e = s.load().unwrap_err().to_string();
    let load = t0.elapsed();
    assert!(e.contains("no answer in time") || e.contains("time is up"), "{e}");
    let t0 = std::time::Instant::now();
    let e = s.commit(b"x", &Expect::Version(crate::store::Version("v".into()))).unwrap_err();
    let commit = t0.elapsed();
    assert!(matches!(e, StoreError::OutcomeUnknown { .. } | StoreError::Backend { .. }), "{e}");
    let bound = timeout + std::time::Duration::from_millis(500);
    assert!(load < bound && commit < bound, "load took {load:?}, commit {commit:?}; the bound is {timeout:?}");
}
