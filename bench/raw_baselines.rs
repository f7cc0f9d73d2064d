//! Raw baselines for `scripts/bench`: the storage work a duratom commit does,
//! done by the same Rust code and client libraries with no JVM around it.
//!
//! ```text
//! raw_baselines file PATH BYTES-FILE MILLIS [MIN-OPS]   FileStore::commit of the bytes, in a loop
//!                                                       (temp write, fsync, rename, fsync of the directory)
//! raw_baselines append PATH BYTES-FILE MILLIS [MIN-OPS] FileStore::append of the bytes as a change record,
//!                                                       in a loop, on a log-mode file holding a small base
//!                                                       (one write and one fdatasync each)
//! raw_baselines pg BYTES-FILE MILLIS [MIN-OPS]          UPDATE t SET value = $1 WHERE id = $2, one row,
//!                                                       on a dedicated table (env DURATOM_TEST_PG_*)
//! raw_baselines s3 BYTES-FILE MILLIS [MIN-OPS]          PutObject of the bytes (env DURATOM_TEST_S3_*)
//! raw_baselines sqlite PATH BYTES-FILE MILLIS [MIN-OPS] UPDATE t SET value = ?1 WHERE id = 0 through
//!                                                       rusqlite, WAL + synchronous=FULL as a duratom's
//! raw_baselines redis BYTES-FILE MILLIS [MIN-OPS]       SET of the bytes through the redis crate's own
//!                                                       connection (env DURATOM_TEST_REDIS_*)
//! raw_baselines sqlite-checkpoint PATH BYTES-FILE MILLIS [MIN-OPS]
//!                                                       the sqlite mode's UPDATE, then wal_checkpoint(PASSIVE),
//!                                                       as a SQLite duratom's commit makes it durable
//! raw_baselines pg|s3|redis-store conditional|unconditional BYTES-FILE MILLIS [MIN-OPS]
//!                                                       Store::commit of the backend's store (env as above),
//!                                                       conditional on the version last seen (what every
//!                                                       duratom commit sends) or unconditional
//! ```
//!
//! Each mode sets up, warms up (a few operations, untimed), then repeats the
//! operation until MILLIS have passed and at least MIN-OPS (default 1) ran,
//! and prints one line:
//!
//! ```text
//! RAW mode=file ops=1234 secs=1.000512 ops_per_sec=1233.37 ms_per_op=0.8108 bytes=312
//! ```

use std::env;
use std::process::exit;
use std::time::{Duration, Instant};

use duratom::config::Config;
use duratom::file::FileStore;
use duratom::store::{Expect, Store};

fn usage() -> ! {
    eprintln!("usage: raw_baselines file|append|sqlite|sqlite-checkpoint PATH BYTES-FILE MILLIS [MIN-OPS] | pg|s3|redis BYTES-FILE MILLIS [MIN-OPS] | pg-store|s3-store|redis-store conditional|unconditional BYTES-FILE MILLIS [MIN-OPS]");
    exit(2)
}

fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| {
        eprintln!("raw_baselines: environment variable {name} is not set");
        exit(2)
    })
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("raw_baselines: {what}: {e}");
    exit(1)
}

/// Warms up with `warmup` untimed operations, then runs `op` until `millis`
/// have passed and at least `min_ops` ran; prints the RAW line.
fn measure(mode: &str, bytes: usize, millis: u64, min_ops: u64, warmup: u64, mut op: impl FnMut()) {
    for _ in 0..warmup {
        op();
    }
    let limit = Duration::from_millis(millis);
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        op();
        ops += 1;
        if ops >= min_ops && start.elapsed() >= limit {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "RAW mode={mode} ops={ops} secs={secs:.6} ops_per_sec={:.2} ms_per_op={:.4} bytes={bytes}",
        ops as f64 / secs,
        secs * 1000.0 / ops as f64
    );
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or_else(|| usage());
    let rest = &args[1..];
    let (path, rest) = match mode {
        "file" | "append" | "sqlite" | "sqlite-checkpoint" | "pg-store" | "s3-store" | "redis-store" => {
            (Some(rest.first().unwrap_or_else(|| usage()).clone()), &rest[1..])
        }
        "pg" | "s3" | "redis" => (None, rest),
        _ => usage(),
    };
    if rest.len() < 2 || rest.len() > 3 {
        usage();
    }
    let bytes = std::fs::read(&rest[0]).unwrap_or_else(|e| fail(&format!("reading {}", rest[0]), e));
    let millis: u64 = rest[1].parse().unwrap_or_else(|_| usage());
    let min_ops: u64 = rest.get(2).map(|s| s.parse().unwrap_or_else(|_| usage())).unwrap_or(1);
    match mode {
        "file" => file(&path.unwrap(), &bytes, millis, min_ops),
        "append" => append(&path.unwrap(), &bytes, millis, min_ops),
        "pg" => pg(&bytes, millis, min_ops),
        "s3" => s3(&bytes, millis, min_ops),
        "sqlite" => sqlite(&path.unwrap(), &bytes, millis, min_ops, false),
        "sqlite-checkpoint" => sqlite(&path.unwrap(), &bytes, millis, min_ops, true),
        "redis" => redis_set(&bytes, millis, min_ops),
        "pg-store" | "s3-store" | "redis-store" => {
            let conditional = match path.as_deref() {
                Some("conditional") => true,
                Some("unconditional") => false,
                _ => usage(),
            };
            store_commits(mode, conditional, &bytes, millis, min_ops)
        }
        _ => usage(),
    }
}

/// The durable replace exactly as a file duratom's commit does it.
fn file(path: &str, bytes: &[u8], millis: u64, min_ops: u64) {
    let mut store = FileStore::open(&Config::from_pairs("local-file", &[("path", path)]))
        .unwrap_or_else(|e| fail("opening the file store", e));
    let warmup = if bytes.len() > 1 << 20 { 1 } else { 20 };
    let mut after = None;
    measure("file", bytes.len(), millis, min_ops, warmup, || {
        after = Some(store.commit(bytes, &Expect::Anything { after: after.take() }).unwrap_or_else(|e| fail("commit", e)));
    });
}

/// The append of log mode, as a file duratom's commit makes it: the record
/// goes after the version last written, one fdatasync each. A fresh file
/// holds a small base (records grow the file, never replace it).
fn append(path: &str, bytes: &[u8], millis: u64, min_ops: u64) {
    let _ = std::fs::remove_file(path);
    let mut store = FileStore::open(&Config::from_pairs("local-file", &[("path", path), ("log", "true")]))
        .unwrap_or_else(|e| fail("opening the file store", e));
    let mut after = store.commit(b"{}", &Expect::Anything { after: None }).unwrap_or_else(|e| fail("writing the base", e));
    measure("append", bytes.len(), millis, min_ops, 20, || {
        after = store.append(bytes, &after).unwrap_or_else(|e| fail("append", e));
    });
}

/// One prepared single-row UPDATE per operation (autocommit, so one
/// transaction and one WAL fsync each), on a database set up as a SQLite
/// duratom's: WAL mode, synchronous=FULL; with `checkpoint`, each followed
/// by the checkpoint a duratom's commit makes before it returns.
fn sqlite(path: &str, bytes: &[u8], millis: u64, min_ops: u64, checkpoint: bool) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| fail("the bytes are not UTF-8 text", e));
    let db = rusqlite::Connection::open(path).unwrap_or_else(|e| fail("opening the database", e));
    db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| fail("WAL mode", e));
    db.pragma_update(None, "synchronous", "FULL").unwrap_or_else(|e| fail("synchronous=FULL", e));
    db.execute_batch("CREATE TABLE IF NOT EXISTS raw_bench (id INTEGER, value TEXT); DELETE FROM raw_bench; INSERT INTO raw_bench VALUES (0, '');")
        .unwrap_or_else(|e| fail("creating the table", e));
    let mut update = db
        .prepare("UPDATE raw_bench SET value = ?1 WHERE id = 0")
        .unwrap_or_else(|e| fail("prepare", e));
    // SQLite writes nothing for an UPDATE that leaves the row as it was, so
    // alternate between two texts (the same EDN, one with a trailing space),
    // as every swap! writes a new value.
    let texts = [text.to_string(), format!("{text} ")];
    let mut i = 0usize;
    measure("sqlite", bytes.len(), millis, min_ops, 20, || {
        i += 1;
        update.execute([&texts[i % 2]]).unwrap_or_else(|e| fail("UPDATE", e));
        if checkpoint {
            db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap_or_else(|e| fail("checkpoint", e));
        }
    });
}

/// Commits through the backend's own store, as a duratom's engine calls it
/// but with no JVM: each commit conditional on the version the previous one
/// returned, or unconditional. The two modes, measured in the same run, give
/// the cost of the condition alone.
fn store_commits(mode: &str, conditional: bool, bytes: &[u8], millis: u64, min_ops: u64) {
    let config = match mode {
        "pg-store" => Config::from_pairs(
            "postgres-db",
            &[
                ("host", &env_var("DURATOM_TEST_PG_HOST")),
                ("port", &env_var("DURATOM_TEST_PG_PORT")),
                ("user", &env_var("DURATOM_TEST_PG_USER")),
                ("password", &env_var("DURATOM_TEST_PG_PASSWORD")),
                ("dbname", &env_var("DURATOM_TEST_PG_DB")),
                ("table", "duratom_bench_store"),
            ],
        ),
        "s3-store" => Config::from_pairs(
            "aws-s3",
            &[
                ("bucket", "duratom-bench-store"),
                ("key", "state"),
                ("endpoint", &env_var("DURATOM_TEST_S3_ENDPOINT")),
                ("region", &env::var("DURATOM_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into())),
                ("access-key", &env_var("DURATOM_TEST_S3_ACCESS_KEY")),
                ("secret-key", &env_var("DURATOM_TEST_S3_SECRET_KEY")),
            ],
        ),
        _ => Config::from_pairs(
            "redis-db",
            &[
                (
                    "url",
                    &format!(
                        "redis://:{}@{}:{}/0",
                        env_var("DURATOM_TEST_REDIS_PASSWORD"),
                        env_var("DURATOM_TEST_REDIS_HOST"),
                        env_var("DURATOM_TEST_REDIS_PORT")
                    ),
                ),
                ("key", "duratom-bench-store"),
            ],
        ),
    };
    let mut store = duratom::backends::open_store(&config).unwrap_or_else(|e| fail("opening the store", e));
    // Two values in turn (the same EDN, one with a trailing space), so that
    // every commit changes what is stored, as every swap! does.
    let values = [bytes.to_vec(), [bytes, b" "].concat()];
    let mut last = store.commit(&values[0], &Expect::Anything { after: None }).unwrap_or_else(|e| fail("commit", e));
    let mut i = 0usize;
    let label = if conditional { "conditional" } else { "unconditional" };
    measure(&format!("{mode}-{label}"), bytes.len(), millis, min_ops, 10, || {
        i += 1;
        let expect = if conditional {
            Expect::Version(last.clone())
        } else {
            Expect::Anything { after: Some(last.clone()) }
        };
        last = store.commit(&values[i % 2], &expect).unwrap_or_else(|e| fail("commit", e));
    });
}

/// One prepared single-row UPDATE per operation (autocommit, so one
/// transaction and one WAL flush each), over a kept connection set up as a
/// duratom's is (TLS if the server offers it, certificate not checked).
fn pg(bytes: &[u8], millis: u64, min_ops: u64) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| fail("the bytes are not UTF-8 text", e));
    let mut config = postgres::Config::new();
    config
        .host(&env_var("DURATOM_TEST_PG_HOST"))
        .port(env_var("DURATOM_TEST_PG_PORT").parse().unwrap_or_else(|e| fail("DURATOM_TEST_PG_PORT", e)))
        .user(&env_var("DURATOM_TEST_PG_USER"))
        .password(env_var("DURATOM_TEST_PG_PASSWORD"))
        .dbname(&env_var("DURATOM_TEST_PG_DB"))
        .ssl_mode(postgres::config::SslMode::Prefer);
    let tls = duratom::postgres::prefer_tls_connector().unwrap_or_else(|e| fail("TLS setup", e));
    let mut client = config
        .connect(tls)
        .unwrap_or_else(|e| fail("connecting", e));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS duratom_bench_raw (id integer, value text);
             DELETE FROM duratom_bench_raw WHERE id = 0;
             INSERT INTO duratom_bench_raw (id, value) VALUES (0, '');",
        )
        .unwrap_or_else(|e| fail("creating the table", e));
    let update = client
        .prepare("UPDATE duratom_bench_raw SET value = $1 WHERE id = $2")
        .unwrap_or_else(|e| fail("preparing", e));
    let id: i32 = 0;
    measure("pg", bytes.len(), millis, min_ops, 20, || {
        let n = client.execute(&update, &[&text, &id]).unwrap_or_else(|e| fail("update", e));
        if n != 1 {
            fail("update", format!("updated {n} rows"));
        }
    });
}

/// PutObject through the SDK, configured as a duratom's S3 client is (path
/// style, checksums only where required, duratom's own HTTPS client), driven
/// by the library's runtime.
fn s3(bytes: &[u8], millis: u64, min_ops: u64) {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
    use aws_sdk_s3::primitives::ByteStream;

    let endpoint = env_var("DURATOM_TEST_S3_ENDPOINT");
    let region = env::var("DURATOM_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
    let creds = Credentials::new(
        env_var("DURATOM_TEST_S3_ACCESS_KEY"),
        env_var("DURATOM_TEST_S3_SECRET_KEY"),
        None,
        None,
        "bench",
    );
    let bucket = "duratom-bench-raw";
    let shared = duratom::runtime::block_on(
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .endpoint_url(&endpoint)
            .credentials_provider(creds)
            // the SDK has no HTTP client of its own here (default features off)
            .http_client(duratom::https::client())
            .load(),
    )
    .unwrap_or_else(|e| fail("runtime", e));
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let created = duratom::runtime::block_on(client.create_bucket().bucket(bucket).send())
        .unwrap_or_else(|e| fail("runtime", e));
    if let Err(e) = created {
        let exists = e
            .as_service_error()
            .map(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists())
            .unwrap_or(false);
        if !exists {
            fail("creating the bucket", aws_sdk_s3::error::DisplayErrorContext(&e));
        }
    }
    measure("s3", bytes.len(), millis, min_ops, 10, || {
        let put = client.put_object().bucket(bucket).key("raw").body(ByteStream::from(bytes.to_vec())).send();
        duratom::runtime::block_on(put)
            .unwrap_or_else(|e| fail("runtime", e))
            .unwrap_or_else(|e| fail("PutObject", aws_sdk_s3::error::DisplayErrorContext(&e)));
    });
}

/// SET of the bytes on one kept connection, the command a duratom's
/// unconditional commit sends, through the crate's own connection.
fn redis_set(bytes: &[u8], millis: u64, min_ops: u64) {
    let url = format!(
        "redis://:{}@{}:{}/0",
        env_var("DURATOM_TEST_REDIS_PASSWORD"),
        env_var("DURATOM_TEST_REDIS_HOST"),
        env_var("DURATOM_TEST_REDIS_PORT")
    );
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| fail("the Redis URL", e));
    let mut conn = client.get_connection().unwrap_or_else(|e| fail("connecting to Redis", e));
    measure("redis", bytes.len(), millis, min_ops, 20, || {
        let () = redis::cmd("SET")
            .arg("duratom-bench-raw")
            .arg(bytes)
            .query(&mut conn)
            .unwrap_or_else(|e| fail("SET", e));
    });
}
