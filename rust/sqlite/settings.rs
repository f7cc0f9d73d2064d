//! The settings a SQLite store is configured with, as read from the
//! configuration; `SqliteStore::new` (store.rs) checks them.

use serde::Deserialize;

/// The keys a SQLite store is configured with (made by
/// `clojure/duratom/backend/sqlite.clj`); any other key is an error at open.
/// Missing keys take the values of [`Default`] below, the one place where
/// defaults live; `path` and `table` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Settings {
    /// The database file; its directory must exist.
    pub(super) path: Option<String>,
    pub(super) table: Option<String>,
    pub(super) row_id: i64,
    /// text or blob: the `value` column's type when the table is created.
    pub(super) column_type: String,
    pub(super) busy_timeout_ms: i64,
    /// Log mode: change records in a table beside the row (see store.rs).
    pub(super) log: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { path: None, table: None, row_id: 0, column_type: "text".into(), busy_timeout_ms: 5000, log: false }
    }
}
