//! The local-file backend: one value in one file.
//!
//! A commit is crash-durable (a temp file beside the target, fsynced,
//! renamed over it, then the directory fsynced): whenever the process or
//! machine dies, the file holds either the previous or the new complete
//! state. EDN files carry a checksummed header line giving the version
//! (`format.rs`); with `:raw true` (a custom `:rw` encoding such as nippy)
//! no header is written, since the user's reader expects the file as it
//! wrote it, and the version of such a file is a SHA-256 of its bytes.
//!
//! `version` counts commits and is the store's version token: the next
//! commit numbers its state after the version the caller last saw, and the
//! store keeps no count of its own. A conditional commit holds the lock on
//! `<file>.lock` while it compares and writes.
//!
//! The backend owns only what it wrote: a symlinked path is written through
//! and stays a link, special files are refused untouched (`resolve.rs`), and
//! clean-up removes only temp files whose writer is provably gone
//! (`temp.rs`).
//!
//! Configuration keys: see `Settings` in `settings.rs` (made by
//! `clojure/duratom/backend/file.clj`); an unknown key is an error.
//!
//! The files: `settings.rs` is the configuration as read; `store.rs` checks
//! it, builds the store and runs the operations; `temp.rs` names, creates
//! and cleans up the files beside the state's file; `resolve.rs` follows the
//! path to that file; `format.rs` is the on-disk format; `os/`
//! holds every call that depends on the operating system; `tests.rs` runs
//! them on real files. Apart from `store.rs`, which uses them, each imports
//! only from files listed after it.

mod format;
// Also names files for the SQLite store (their identity on Windows).
pub(crate) mod os;
mod resolve;
mod settings;
mod store;
mod temp;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub use store::FileStore;

const BACKEND: &str = "local-file";

/// Opens the file the config names, creating it empty if missing, so that a
/// wrong path fails at construction.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(FileStore::open(config)?))
}
