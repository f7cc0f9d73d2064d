//! These run against a real server: `scripts/redis-server start DIR` starts
//! one and writes DIR/env with its coordinates.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::Config;
use crate::store::{Expect, StoreError};

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

fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "duratom:test:{label}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
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

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

#[test]
fn values_round_trip_and_conditional_commits_compare() {
    let key = unique("rt");
    let mut s = open(&config(&key)).unwrap();
    assert!(s.load().unwrap().is_none());
    let v1 = s.commit(&[0, 1, 2, 255, b'{'], &Expect::Nothing).unwrap();
    assert!(conflict(s.commit(b"x", &Expect::Nothing)));
    let got = s.load().unwrap().unwrap();
    assert_eq!(got.bytes, vec![0, 1, 2, 255, b'{']);
    assert_eq!(got.version, v1);
    let v2 = s.commit(b"{:a 2}", &Expect::Version(v1.clone())).unwrap();
    assert!(conflict(s.commit(b"{:a 3}", &Expect::Version(v1))));
    let mut other = open(&config(&key)).unwrap();
    assert_eq!(other.load().unwrap().unwrap().version, v2);
    other.commit(b"outside", &Expect::Anything).unwrap();
    assert!(conflict(s.commit(b"{:a 4}", &Expect::Version(v2))));
    s.delete().unwrap();
    assert!(s.load().unwrap().is_none());
    s.delete().unwrap();
}

#[test]
fn the_version_is_what_redis_lua_computes() {
    // The compare runs in Lua (redis.sha1hex); our token must be the same.
    let key = unique("sha");
    let mut s = open(&config(&key)).unwrap();
    let v = s
        .commit("caf\u{e9} \u{1F600}".as_bytes(), &Expect::Anything)
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
    s.commit(b"1", &Expect::Anything).unwrap();
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
    s.commit(b"2", &Expect::Anything).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"2");
    s.delete().unwrap();
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
