//! The S3 backend against a real S3-compatible server: `scripts/s3-server
//! start DIR` starts one and writes the variables to `DIR/env`.

use super::settings::{check_user_metadata, validate_bucket_name, Settings};
use super::*;
use crate::store::Expect;
use crate::test_support::unique;
use aws_config::retry::RetryConfig;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_sdk_s3::Client;
use std::time::Duration;
use std::net::TcpListener;
use std::process::Command;
use std::time::Instant;

struct Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
}

fn server() -> Server {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set. These tests need a local S3 server: run \
                 `scripts/s3-server start /tmp/s3test && . /tmp/s3test/env` first"
            )
        })
    };
    Server {
        endpoint: var("DURATOM_TEST_S3_ENDPOINT"),
        access_key: var("DURATOM_TEST_S3_ACCESS_KEY"),
        secret_key: var("DURATOM_TEST_S3_SECRET_KEY"),
        region: var("DURATOM_TEST_S3_REGION"),
    }
}

/// A bucket name no earlier run on the same server has used.
fn fresh_bucket(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("dt-{}-{nanos}", unique(what).replace('_', "-"))
}

// A bucket per resource name (S3 bucket names have no `_`).
crate::store_contract_tests!(|_: &std::path::Path, name: &str| config(&name.replace('_', "-"), "state", &[]));

fn config(bucket: &str, key: &str, extra: &[(&str, &str)]) -> Config {
    let s = server();
    let mut pairs = vec![
        ("bucket", bucket),
        ("key", key),
        ("endpoint", s.endpoint.as_str()),
        ("region", s.region.as_str()),
        ("access-key", s.access_key.as_str()),
        ("secret-key", s.secret_key.as_str()),
    ];
    pairs.extend_from_slice(extra);
    Config::from_pairs(BACKEND, &pairs)
}

/// The store a config names, as its own type (the tests look inside).
fn open_s3(config: &Config) -> Result<S3Store, StoreError> {
    S3Store::open(config.settings::<Settings>()?)
}

fn open_store(bucket: &str, key: &str) -> S3Store {
    open_s3(&config(bucket, key, &[])).unwrap_or_else(|e| panic!("open {bucket}/{key}: {e}"))
}

fn bucket_exists(store: &S3Store) -> bool {
    crate::runtime::block_on(store.client.head_bucket().bucket(&store.bucket).send()).unwrap().is_ok()
}

#[test]
fn creates_the_missing_bucket_and_a_missing_key_is_nothing_stored() {
    let bucket = fresh_bucket("create");
    let mut store = open_store(&bucket, "state/0");
    assert!(bucket_exists(&store), "open should have created {bucket}");
    assert_eq!(store.resource().to_string(), format!("aws-s3 {bucket}/state/0"));
    assert!(store.load().unwrap().is_none());
    // Opening again finds the bucket there and leaves it be.
    let mut again = open_store(&bucket, "state/0");
    assert!(again.load().unwrap().is_none());
}

#[test]
fn creates_a_bucket_with_a_location_constraint_outside_us_east_1() {
    let bucket = fresh_bucket("region");
    let store = open_s3(&config(&bucket, "k", &[("region", "eu-west-1")])).unwrap();
    let location = crate::runtime::block_on(store.client.get_bucket_location().bucket(&bucket).send())
        .unwrap()
        .unwrap();
    assert_eq!(location.location_constraint().map(|c| c.as_str()), Some("eu-west-1"));
}

#[test]
fn round_trips_small_and_20_mb_values_with_the_etag_as_version() {
    let bucket = fresh_bucket("roundtrip");
    let mut store = open_store(&bucket, "state/0");
    let v1 = store.commit("{:x 1, :s \"héllo 🌍\"}".as_bytes(), &Expect::Anything { after: None }).unwrap();
    let got = store.load().unwrap().unwrap();
    assert_eq!(got.bytes, "{:x 1, :s \"héllo 🌍\"}".as_bytes());
    assert_eq!(got.version, v1);

    // 20 MB of varied bytes (so no layer can get away with compressing it).
    let mut big = vec![0u8; 20 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let v2 = store.commit(&big, &Expect::Version(v1.clone())).unwrap();
    assert_ne!(v2, v1);
    let mut reopened = open_store(&bucket, "state/0");
    let got = reopened.load().unwrap().unwrap();
    assert!(got.bytes == big, "the 20 MB value came back different ({} bytes)", got.bytes.len());
    assert_eq!(got.version, v2);
}

#[test]
fn writes_carry_user_metadata_encryption_and_content_type() {
    let bucket = fresh_bucket("meta");
    let cfg = config(&bucket, "m", &[("sse", "AES256"), ("content-type", "application/edn")])
        .with_edn("user-metadata", r#"[["owner" "team-a"] ["Purpose" "state of x"]]"#);
    let mut store = open_s3(&cfg).unwrap();
    store.commit(b"{:a 1}", &Expect::Anything { after: None }).unwrap();
    let head =
        crate::runtime::block_on(store.client.head_object().bucket(&bucket).key("m").send()).unwrap().unwrap();
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("owner").map(String::as_str), Some("team-a"), "{meta:?}");
    assert_eq!(meta.get("purpose").map(String::as_str), Some("state of x"), "{meta:?}");
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
    assert_eq!(head.content_type(), Some("application/edn"));
}

/// Runs this test binary again, only the test `name`, in a child process
/// whose AWS environment is exactly `env` (plus an empty HOME, so no
/// profile files are found). Credentials from the environment can only be
/// tested this way: setting variables in this process would race with the
/// other tests' threads.
fn run_child(name: &str, env: &[(&str, &str)]) {
    let home = tempfile::tempdir().unwrap();
    let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
    let exe = std::env::current_exe().unwrap();
    // Under an emulator without binfmt_misc (the release runs the aarch64
    // tests as `qemu-aarch64 BINARY`) the kernel cannot execute this binary
    // itself: DURATOM_TEST_RUNNER names the program that runs it.
    let mut cmd = match std::env::var_os("DURATOM_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home.path())
        // No EC2 instance metadata unless a test asks for it (`env` below
        // overrides): what the address does off EC2 depends on the network.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("DURATOM_S3_TEST_CHILD", name)
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child test {test} failed:\n{text}");
    assert!(text.contains("1 passed"), "child test {test} did not run:\n{text}");
}

fn in_child(name: &str) -> bool {
    std::env::var("DURATOM_S3_TEST_CHILD").as_deref() == Ok(name)
}

#[test]
fn credentials_from_the_environment_when_no_access_key_is_given() {
    let s = server();
    let name = "credentials_from_the_environment_when_no_access_key_is_given";
    if !in_child(name) {
        run_child(name, &[("AWS_ACCESS_KEY_ID", &s.access_key), ("AWS_SECRET_ACCESS_KEY", &s.secret_key)]);
        return;
    }
    let bucket = fresh_bucket("envcreds");
    let cfg = Config::from_pairs(
        BACKEND,
        &[("bucket", &bucket), ("key", "k"), ("endpoint", &s.endpoint), ("region", &s.region)],
    );
    let mut store = open_s3(&cfg).unwrap();
    store.commit(b"from env", &Expect::Anything { after: None }).unwrap();
    assert_eq!(store.load().unwrap().unwrap().bytes, b"from env");
}

#[test]
fn no_credentials_anywhere_is_a_clear_error_at_open() {
    let s = server();
    let name = "no_credentials_anywhere_is_a_clear_error_at_open";
    if !in_child(name) {
        // Nothing in the environment or profiles, and the last source of
        // the chain, EC2 instance metadata, in each of its states here:
        // disabled, refusing, and silent (which only the timeout ends).
        run_child(name, &[]);
        let refusing = format!("http://127.0.0.1:{}", closed_port());
        run_child(name, &[("AWS_EC2_METADATA_DISABLED", "false"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &refusing)]);
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_url = format!("http://{}", silent.local_addr().unwrap());
        run_child(name, &[("AWS_EC2_METADATA_DISABLED", "false"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &silent_url)]);
        return;
    }
    let cfg = Config::from_pairs(
        BACKEND,
        &[
            ("bucket", "dt-nocreds"),
            ("key", "k"),
            ("endpoint", &s.endpoint),
            ("region", &s.region),
            ("timeout-ms", "2000"),
        ],
    );
    let start = Instant::now();
    let err = open_s3(&cfg).err().expect("open must fail without credentials");
    let took = start.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Config { .. }), "{err:?}");
    assert!(msg.contains("no AWS credentials found for dt-nocreds/k"), "{msg}");
    assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {msg}");
    println!("child saw, after {took:?}: {msg}");
}

/// A port on which nothing listens: bind one, then let it go.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_refusing_endpoint_fails_at_open_quickly_and_clearly() {
    let secret = "s3cr3t-never-shown";
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let cfg = Config::from_pairs(
        BACKEND,
        &[
            ("bucket", "dt-dead"),
            ("key", "k"),
            ("endpoint", &endpoint),
            ("access-key", "AKIDEXAMPLE"),
            ("secret-key", secret),
            ("timeout-ms", "3000"),
        ],
    );
    let start = Instant::now();
    let err = open_s3(&cfg).err().expect("open must fail");
    let took = start.elapsed();
    let msg = err.to_string();
    assert!(took < Duration::from_secs(4), "took {took:?}: {msg}");
    assert!(msg.contains("aws-s3 dt-dead/k"), "{msg}");
    assert!(msg.contains(&format!("connection refused by {endpoint}")), "{msg}");
    assert!(!msg.contains(secret), "{msg}");
}

#[test]
fn a_silent_endpoint_fails_within_the_timeout() {
    // It accepts connections (the kernel completes the handshake into the
    // backlog) but never answers: the case a timeout exists for.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let cfg = Config::from_pairs(
        BACKEND,
        &[
            ("bucket", "dt-silent"),
            ("key", "k"),
            ("endpoint", &endpoint),
            ("access-key", "AKIDEXAMPLE"),
            ("secret-key", "x"),
            ("timeout-ms", "1500"),
        ],
    );
    let start = Instant::now();
    let err = open_s3(&cfg).err().expect("open must fail");
    let took = start.elapsed();
    let msg = err.to_string();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "took {took:?}: {msg}");
    assert!(msg.contains("aws-s3 dt-silent/k"), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    drop(silent);
}

#[test]
fn an_operation_on_a_store_whose_server_went_away_names_bucket_and_key() {
    // Open against the real server, then point the same bucket at a dead
    // port: what a swap! sees when the server dies under it.
    let bucket = fresh_bucket("gone");
    let mut store = open_store(&bucket, "k");
    store.commit(b"1", &Expect::Anything { after: None }).unwrap();
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let conf = store.client.config().to_builder().endpoint_url(&dead).build();
    store.client = Client::from_conf(conf.clone());
    store.conditional_client = Client::from_conf(conf.to_builder().retry_config(RetryConfig::disabled()).build());
    store.target = dead.clone();
    let err = store.commit(b"2", &Expect::Anything { after: None }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("aws-s3 {bucket}/k: writing the object failed: connection refused")), "{msg}");
    // A conditional write to a refusing server: retried, then the same error.
    let msg = store.commit(b"3", &Expect::Nothing).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("aws-s3 {bucket}/k: writing the object failed: connection refused")), "{msg}");
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("reading the object failed: connection refused"), "{err}");
}

/// A TCP proxy to `upstream` that, on its first connection, lets the
/// request through and then hangs up as soon as the answer starts: the
/// server did the work, the client never hears of it.
fn proxy_losing_the_first_response(upstream: &str) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let mut server = TcpStream::connect(&upstream).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(Shutdown::Write);
            });
            if n == 0 {
                let mut first = [0u8; 1];
                let _ = server.read(&mut first); // the server has answered
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            } else {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.flush();
                    let _ = client.shutdown(Shutdown::Write);
                });
            }
        }
    });
    url
}

#[test]
fn a_conditional_write_whose_answer_was_lost_is_not_reported_as_a_conflict() {
    let bucket = fresh_bucket("lost");
    let mut store = open_store(&bucket, "k");
    let proxy = proxy_losing_the_first_response(&server().endpoint);
    let conf = store.conditional_client.config().to_builder().endpoint_url(&proxy).build();
    store.conditional_client = Client::from_conf(conf);
    // The create lands, its answer is lost, the retry is refused (412): a
    // conflict would make the caller apply its update twice.
    let err = store.commit(b"mine", &Expect::Nothing).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::OutcomeUnknown { .. }), "{err:?}");
    assert!(msg.contains("outcome unknown"), "{msg}");
    assert_eq!(store.load().unwrap().unwrap().bytes, b"mine");
    // Through the proxy, now passing answers, a stale create is a conflict.
    assert!(matches!(store.commit(b"again", &Expect::Nothing), Err(StoreError::Conflict { .. })));
}

#[test]
fn invalid_bucket_names_are_config_errors_naming_the_bucket() {
    for bad in ["My_Bucket", "ab", &"a".repeat(64), "-abc", "abc-", "a..b", "192.168.1.1", "UPPER"] {
        let cfg = Config::from_pairs(BACKEND, &[("bucket", bad), ("key", "k"), ("access-key", "a"), ("secret-key", "b")]);
        match open_s3(&cfg) {
            Err(e @ StoreError::Config { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("`{bad}` is not a valid S3 bucket name")), "{msg}");
            }
            Err(e) => panic!("{bad}: expected a config error, got {e:?}"),
            Ok(_) => panic!("{bad} was accepted"),
        }
    }
    validate_bucket_name("my-bucket.v2").unwrap();
}

#[test]
fn other_bad_settings_are_config_errors() {
    let secret = "s3cr3t-never-shown";
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("secret-key", secret)], "secret key but no access key"),
        (vec![("access-key", "a")], "access key but no secret key"),
        (vec![("access-key", "a"), ("secret-key", secret), ("endpoint", "127.0.0.1:9000")], "http:// or https:// URL"),
        (vec![("access-key", "a"), ("secret-key", secret), ("timeout-ms", "0")], "`timeout-ms` must be positive"),
        (vec![("access-key", "a"), ("secret-key", secret), ("sse", "ROT13")], "`sse`"),
        (vec![("access-key", "a"), ("secret-key", secret), ("user-metadata", "a=b")], "`user-metadata`: expected a sequence, got a string"),
        (vec![("access-key", "a"), ("secret-key", secret), ("timeout-ms", "soon")], "`timeout-ms`: expected i64, got a string"),
        (vec![("access-key", "a"), ("secret-key", secret), ("metadata", "x")], "unknown key `metadata`"),
        (vec![("access-key", "a"), ("secret-key", secret)], "`key` is required"),
    ];
    for (extra, expected) in cases {
        let mut pairs = vec![("bucket", "dt-bad")];
        if expected != "`key` is required" {
            pairs.push(("key", "k"));
        }
        pairs.extend(extra.iter().copied());
        let err = open_s3(&Config::from_pairs(BACKEND, &pairs)).err().expect("must fail");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Config { .. }), "{msg}");
        assert!(msg.contains(expected), "expected `{expected}` in: {msg}");
        assert!(!msg.contains(secret), "{msg}");
    }
}

#[test]
fn user_metadata_names_and_values_are_checked() {
    let pairs = |p: &[(&str, &str)]| p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(check_user_metadata(pairs(&[("a", "1"), ("B-c", "x=y")])).unwrap(), pairs(&[("a", "1"), ("b-c", "x=y")]));
    assert!(check_user_metadata(Vec::new()).unwrap().is_empty());
    let e = check_user_metadata(pairs(&[("a b", "c")])).unwrap_err().to_string();
    assert!(e.contains("user metadata name `a b`"), "{e}");
    let e = check_user_metadata(pairs(&[("a", "é")])).unwrap_err().to_string();
    assert!(e.contains("printable US-ASCII"), "{e}");
}
