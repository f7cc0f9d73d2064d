//! The SQLite backend: one value in one row of one table of a database file,
//! through rusqlite with the SQLite compiled in (users need no system library).
//!
//! The table has the shape the original library's tables have,
//! `(id integer, value text|blob)`: a row is found by `id`, so several stores
//! may share a table with different row ids, and a table the original wrote
//! works as it is (no column is added).
//!
//! Durability: the connection runs in WAL mode with `synchronous=FULL`, so
//! the WAL is fsynced at every commit, and each commit is checkpointed into
//! the database file before it returns (waiting, up to the busy timeout,
//! for other connections' read transactions that hold it back; past that
//! the commit is reported as outcome unknown, not acknowledged), so it stays
//! durable when the WAL file is removed afterwards; the database stays
//! consistent whenever the process or machine
//! dies. WAL mode is a property of the database file: once set it stays, and
//! other SQLite users of the file (the original library included) keep
//! working; the file must be on a local file system, as WAL requires.
//!
//! Version token: a SHA-256 of the stored bytes. A table of the original's
//! shape has no column to count versions in, and SQLite no system column like
//! PostgreSQL's `xmin`; a conditional commit takes the write lock
//! (`BEGIN IMMEDIATE`), reads the row, and writes only if the bytes are the
//! ones it last saw. Equal bytes are the same state, so this is exactly the
//! compare of compare-and-set.
//!
//! Log mode (`log` true): a commit may append a change record, kept in a
//! table beside the user's (see `log.rs`); the row holds the last full
//! state, and the state is the row followed by its records. A row's version
//! is then that of its last record, which chains back to the row's content.
//!
//! Another connection holding the write lock makes a call wait up to
//! `busy-timeout-ms`, then fail saying the database is locked. If the file is
//! removed or replaced while open, the next call notices (its device and
//! inode differ) and reopens the path, so writes never go to a file that is
//! no longer there.
//!
//! Safe SQL: values travel only as bind parameters; the table name appears in
//! SQL only as a quoted identifier.
//!
//! Configuration keys: see `Settings` in `settings.rs` (made by
//! `clojure/duratom/backend/sqlite.clj`); an unknown key is an error.
//!
//! The files: `settings.rs` is the configuration as read, `store.rs` checks
//! it, builds the store and runs the operations, `connection.rs` opens the
//! database (WAL, FULL sync, the table) and tells its files apart, `log.rs`
//! keeps log mode's change records in a table beside the row, `locks.rs`
//! installs SQLite's file locks as OFD locks on Linux (with `ofd_locks.c`),
//! `errors.rs` classifies and words SQLite's errors. `tests.rs` runs them on
//! real database files. Apart from `store.rs`, which uses them, each imports only from files listed after it.

mod connection;
mod errors;
mod locks;
mod log;
mod settings;
mod store;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub use store::SqliteStore;
use settings::Settings;

const BACKEND: &str = "sqlite-db";

/// Opens the row the config names, opening the database and creating the
/// table if missing, so that a wrong path fails at construction.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(SqliteStore::open(config.settings::<Settings>()?)?))
}
