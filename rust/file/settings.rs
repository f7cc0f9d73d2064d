//! The settings a file store is configured with, as read from the
//! configuration; `FileStore::open` (store.rs) checks them.

use serde::Deserialize;

/// The keys a file store is configured with (made by
/// `clojure/duratom/backend/file.clj`); any other key is an error at open.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Settings {
    /// The file. Its parent directory must exist.
    pub(super) path: String,
    /// A custom `:rw` encoding: the bytes are stored without the header line.
    #[serde(default)]
    pub(super) raw: bool,
    /// Log mode: commits may append change records after the base.
    #[serde(default)]
    pub(super) log: bool,
}
