//! The settings a Redis store is configured with, as read from the
//! configuration; `RedisStore::new` (store.rs) checks them.

use serde::Deserialize;

/// The keys a Redis store is configured with (made by
/// `clojure/duratom/backend/redis.clj`); any other key is an error at open.
/// Missing keys take the values of [`Default`] below, the one place where
/// defaults live; `url` and `key` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Settings {
    /// `redis://[user[:password]@]host[:port][/db]`; `rediss://` for TLS.
    pub(super) url: Option<String>,
    /// A PEM file whose certificates are the only trusted roots of a
    /// `rediss://` connection; without it, Mozilla's roots (webpki-roots).
    pub(super) tls_ca_cert_file: Option<String>,
    /// host:port/db, for messages: the URL holds the password.
    pub(super) endpoint: String,
    /// The Redis key the value lives under.
    pub(super) key: Option<String>,
    /// The bound of each call: connecting, every read and write, and a rerun.
    pub(super) timeout_ms: i64,
    /// The connection's name in CLIENT LIST.
    pub(super) client_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: None,
            tls_ca_cert_file: None,
            endpoint: "redis".into(),
            key: None,
            timeout_ms: 5000,
            client_name: "duratom".into(),
        }
    }
}
