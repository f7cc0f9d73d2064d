//! Reading and checking a store's settings from the configuration, before
//! anything touches the network.

use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::config::SslMode;

use super::store::PostgresStore;
use super::table_name::quote_table;
use super::tls::tls_connector;
use super::BACKEND;
use crate::config::Config;
use crate::store::{Resource, StoreError};

/// How the connection uses TLS, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TlsMode {
    Disable,
    /// Try TLS, fall back to plain; the certificate is not checked (libpq
    /// `allow` and `prefer`).
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS, certificate chain checked against the trusted roots.
    VerifyCa,
    /// As VerifyCa, and the certificate must name the host.
    VerifyFull,
}

/// The keys a PostgreSQL store is configured with (made by
/// `clojure/duratom/backend/postgres.clj`); any other key is an error at
/// open. Missing keys take the values of [`Default`] below, the one place
/// where defaults live; `user` and `table` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    /// A host name or address; a path means a Unix socket directory.
    host: String,
    port: i64,
    /// Absent: the database named like the user, as libpq does.
    dbname: Option<String>,
    user: Option<String>,
    password: Option<String>,
    /// disable, allow, prefer, require, verify-ca, verify-full: as libpq.
    sslmode: String,
    /// A PEM file: the only trusted roots when given.
    sslrootcert: Option<String>,
    /// `name` or `schema.name`.
    table: Option<String>,
    row_id: i64,
    /// text or bytea: the `value` column's type when the table is created.
    column_type: String,
    connect_timeout_ms: i64,
    /// The bound on every operation, connecting included; the session's
    /// statement_timeout and lock_timeout are set a little below it.
    timeout_ms: i64,
    /// Absent: as `timeout-ms`; 0 turns it off.
    tcp_user_timeout_ms: Option<i64>,
    application_name: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            host: "localhost".into(),
            port: 5432,
            dbname: None,
            user: None,
            password: None,
            sslmode: "prefer".into(),
            sslrootcert: None,
            table: None,
            row_id: 0,
            column_type: "text".into(),
            connect_timeout_ms: 5000,
            timeout_ms: 30_000,
            tcp_user_timeout_ms: None,
            application_name: "duratom".into(),
        }
    }
}

impl PostgresStore {
    /// Reads and checks the config; does not connect.
    pub(super) fn new(config: &Config) -> Result<PostgresStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);

        let keys: Keys = config.settings()?;
        let host = keys.host.as_str();
        if host.is_empty() {
            return Err(bad("`host` is empty".into()));
        }
        let port = match keys.port {
            p if (1..=65535).contains(&p) => p as u16,
            p => return Err(bad(format!("`port` must be between 1 and 65535, got {p}"))),
        };
        let user = keys.user.as_deref().ok_or_else(|| bad("`user` is required".into()))?;
        if user.is_empty() {
            return Err(bad("`user` is empty".into()));
        }
        let dbname = keys.dbname.as_deref().unwrap_or(user);
        let table = keys.table.as_deref().ok_or_else(|| bad("`table` is required".into()))?;
        let table_sql = quote_table(table).map_err(|d| bad(format!("`table` {d}")))?;
        let row_id = keys.row_id;
        let create_type = match keys.column_type.as_str() {
            "text" => "text",
            "bytea" => "bytea",
            other => return Err(bad(format!("`column-type` must be text or bytea, got `{other}`"))),
        };
        let connect_timeout = match keys.connect_timeout_ms {
            ms if ms > 0 => Duration::from_millis(ms as u64),
            ms => return Err(bad(format!("`connect-timeout-ms` must be positive, got {ms}"))),
        };
        let timeout = match keys.timeout_ms {
            ms if ms > 0 => Duration::from_millis(ms as u64),
            ms => return Err(bad(format!("`timeout-ms` must be positive, got {ms}"))),
        };
        // The server gives up a little earlier than the client, so that its
        // own error (lock held, statement too long) reaches the caller.
        let server_timeout = (timeout - timeout.min(Duration::from_secs(5)) / 5).max(Duration::from_millis(1));
        // Bounds how long a write to a vanished server (network partition)
        // can hang before the connection is declared dead; 0 turns it off.
        let tcp_user_timeout = match keys.tcp_user_timeout_ms {
            None => Some(timeout),
            Some(0) => None,
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            Some(ms) => return Err(bad(format!("`tcp-user-timeout-ms` must not be negative, got {ms}"))),
        };
        let root_cert = match keys.sslrootcert.as_deref() {
            None | Some("") => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| bad(format!("`sslrootcert` {path}: {e}")))?),
        };
        let mode = match keys.sslmode.as_str() {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            // As libpq: `require` with a root certificate given verifies the chain.
            "require" if root_cert.is_some() => TlsMode::VerifyCa,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(bad(format!(
                    "`sslmode` must be one of disable, allow, prefer, require, verify-ca, verify-full; got `{other}`"
                )))
            }
        };
        let tls = tls_connector(mode, root_cert.as_deref())?;

        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name(&keys.application_name)
            .connect_timeout(connect_timeout)
            .ssl_mode(match mode {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            });
        if let Some(t) = tcp_user_timeout {
            pg.tcp_user_timeout(t);
        }
        // Probes an idle connection, so a dead peer is noticed between calls.
        pg.keepalives(true).keepalives_idle(timeout.max(Duration::from_secs(1)));
        if let Some(password) = &keys.password {
            pg.password(password);
        }

        let endpoint = format!("{host}:{port}");
        let resource =
            Resource { backend: BACKEND, name: format!("table \"{table}\" row {row_id} ({endpoint}/{dbname})") };
        let runtime = super::store::own_runtime()
            .map_err(|e| StoreError::backend(&resource, "open", format!("cannot make the I/O runtime: {e}")))?;
        Ok(PostgresStore {
            resource,
            pg,
            tls,
            endpoint,
            connect_timeout,
            timeout,
            server_timeout,
            table_sql,
            create_type,
            row_id,
            conn: None,
            unanswered: None,
            runtime: std::sync::Arc::new(runtime),
        })
    }
}
