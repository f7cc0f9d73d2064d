//! Reading and checking a store's settings from the configuration, before
//! anything touches the network.

use std::time::Duration;

use postgres::config::SslMode;

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

impl PostgresStore {
    /// Reads and checks the config; does not connect.
    pub(super) fn new(config: &Config) -> Result<PostgresStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);

        let host = config.get("host").unwrap_or("localhost");
        if host.is_empty() {
            return Err(bad("`host` is empty".into()));
        }
        let port = match config.number("port")? {
            None => 5432,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => return Err(bad(format!("`port` must be between 1 and 65535, got {p}"))),
        };
        let user = config.required("user")?;
        if user.is_empty() {
            return Err(bad("`user` is empty".into()));
        }
        // libpq's default: the database named like the user.
        let dbname = config.get("dbname").unwrap_or(user);
        let table = config.required("table")?;
        let table_sql = quote_table(table).map_err(|d| bad(format!("`table` {d}")))?;
        let row_id = config.number("row-id")?.unwrap_or(0);
        let create_type = match config.get("column-type").unwrap_or("text") {
            "text" => "text",
            "bytea" => "bytea",
            other => return Err(bad(format!("`column-type` must be text or bytea, got `{other}`"))),
        };
        let connect_timeout = match config.number("connect-timeout-ms")? {
            None => Duration::from_millis(5000),
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
            Some(ms) => return Err(bad(format!("`connect-timeout-ms` must be positive, got {ms}"))),
        };
        // Bounds how long a write to a vanished server (network partition)
        // can hang before the connection is declared dead; 0 turns it off.
        let tcp_user_timeout = match config.number("tcp-user-timeout-ms")? {
            None => Some(Duration::from_millis(30_000)),
            Some(0) => None,
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            Some(ms) => return Err(bad(format!("`tcp-user-timeout-ms` must not be negative, got {ms}"))),
        };
        let root_cert = match config.get("sslrootcert") {
            None | Some("") => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| bad(format!("`sslrootcert` {path}: {e}")))?),
        };
        let mode = match config.get("sslmode").unwrap_or("prefer") {
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

        let mut pg = postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name(config.get("application-name").unwrap_or("duratom"))
            .connect_timeout(connect_timeout)
            .ssl_mode(match mode {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            });
        if let Some(t) = tcp_user_timeout {
            pg.tcp_user_timeout(t);
        }
        if let Some(password) = config.get("password") {
            pg.password(password);
        }

        let endpoint = format!("{host}:{port}");
        let resource =
            Resource { backend: BACKEND, name: format!("table \"{table}\" row {row_id} ({endpoint}/{dbname})") };
        Ok(PostgresStore { resource, pg, tls, endpoint, connect_timeout, table_sql, create_type, row_id, conn: None })
    }
}
