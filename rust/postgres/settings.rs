//! The settings a PostgreSQL store is configured with, as read from the
//! configuration; `PostgresStore::new` (store.rs) checks them.

use serde::Deserialize;

/// The keys a PostgreSQL store is configured with (made by
/// `clojure/duratom/backend/postgres.clj`); any other key is an error at
/// open. Missing keys take the values of [`Default`] below, the one place
/// where defaults live; `user` and `table` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Settings {
    /// A host name or address; a path means a Unix socket directory.
    pub(super) host: String,
    pub(super) port: i64,
    /// Absent: the database named like the user, as libpq does.
    pub(super) dbname: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    /// disable, allow, prefer, require, verify-ca, verify-full: as libpq.
    pub(super) sslmode: String,
    /// A PEM file: the only trusted roots when given.
    pub(super) sslrootcert: Option<String>,
    /// `name` or `schema.name`.
    pub(super) table: Option<String>,
    pub(super) row_id: i64,
    /// text or bytea: the `value` column's type when the table is created.
    pub(super) column_type: String,
    pub(super) connect_timeout_ms: i64,
    /// The bound on every operation, connecting included; the session's
    /// statement_timeout and lock_timeout are set a little below it.
    pub(super) timeout_ms: i64,
    /// Absent: as `timeout-ms`; 0 turns it off.
    pub(super) tcp_user_timeout_ms: Option<i64>,
    pub(super) application_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
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
