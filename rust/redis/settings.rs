//! Reading and checking a store's settings from the configuration, before
//! anything touches the network.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, Script};
use serde::Deserialize;

use super::connection::Target;
use super::store::{RedisStore, COMPARE_AND_SET};
use super::tls;
use super::BACKEND;
use crate::config::Config;
use crate::store::{Resource, StoreError};

/// The keys a Redis store is configured with (made by
/// `clojure/duratom/backend/redis.clj`); any other key is an error at open.
/// Missing keys take the values of [`Default`] below, the one place where
/// defaults live; `url` and `key` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    /// `redis://[user[:password]@]host[:port][/db]`; `rediss://` for TLS.
    url: Option<String>,
    /// A PEM file whose certificates are the only trusted roots of a
    /// `rediss://` connection; without it, Mozilla's roots (webpki-roots).
    tls_ca_cert_file: Option<String>,
    /// host:port/db, for messages: the URL holds the password.
    endpoint: String,
    /// The Redis key the value lives under.
    key: Option<String>,
    /// The bound of each call: connecting, every read and write, and a rerun.
    timeout_ms: i64,
    /// The connection's name in CLIENT LIST.
    client_name: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys { url: None, tls_ca_cert_file: None, endpoint: "redis".into(), key: None, timeout_ms: 5000, client_name: "duratom".into() }
    }
}

impl RedisStore {
    /// Reads and checks the config; does not connect.
    pub(super) fn new(config: &Config) -> Result<RedisStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);
        let keys: Keys = config.settings()?;
        let url = keys.url.ok_or_else(|| bad("`url` is required".into()))?;
        let key = keys.key.ok_or_else(|| bad("`key` is required".into()))?;
        if key.is_empty() {
            return Err(bad("`key` is empty".into()));
        }
        let client_name = keys.client_name;
        if client_name.is_empty() || client_name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("`client-name` must be non-empty, without spaces".into()));
        }
        let timeout_ms = keys.timeout_ms;
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(bad(format!("`timeout-ms` must be 1..3600000, got {timeout_ms}")));
        }
        let endpoint = keys.endpoint;
        let target = target(&url, &endpoint, keys.tls_ca_cert_file.as_deref())?;
        Ok(RedisStore {
            target,
            key: key.as_bytes().to_vec(),
            timeout: Duration::from_millis(timeout_ms as u64),
            resource: Resource { backend: BACKEND, name: format!("{endpoint} key {key}") },
            endpoint,
            client_name,
            cas: Script::new(COMPARE_AND_SET),
            conn: None,
        })
    }
}

/// Where the URL points. `rediss://` is read as `redis://` by the crate
/// (whose own TLS this build leaves out, see `connection.rs`) and means TLS.
fn target(url: &str, endpoint: &str, ca_file: Option<&str>) -> Result<Target, StoreError> {
    let bad = |detail: String| StoreError::config(BACKEND, detail);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        _ => return Err(bad(format!("the connection URL for {endpoint} must start with redis:// or rediss://"))),
    };
    if rest.contains('#') {
        return Err(bad(format!("the connection URL for {endpoint} has a #fragment, which is not read")));
    }
    if ca_file.is_some() && !tls {
        return Err(bad(format!("`tls-ca-cert-file` is given, but the URL for {endpoint} is not rediss://")));
    }
    // The URL holds the password: its parse error is worded without it.
    let info = format!("redis://{rest}")
        .into_connection_info()
        .map_err(|e| bad(format!("the connection URL for {endpoint} is not usable: {}", kind_text(&e))))?;
    let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        return Err(bad(format!("the connection URL for {endpoint} names no TCP host")));
    };
    let redis = info.redis_settings();
    Ok(Target {
        host,
        port,
        username: redis.username().map(str::to_string),
        password: redis.password().map(str::to_string),
        db: redis.db(),
        tls: if tls { Some(tls::client_config(ca_file)?) } else { None },
    })
}

/// A URL parse error's kind and detail, which never quote the URL.
fn kind_text(e: &RedisError) -> String {
    match e.detail() {
        Some(d) => format!("{:?}: {d}", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}
