//! The PostgreSQL backend: one value in one row of one table.
//!
//! The table has exactly the shape the original library created,
//! `(id integer, value text|bytea)` with no key, so tables it wrote keep
//! working in both directions. A row is found by `id`; several stores may
//! share a table with different row ids.
//!
//! The version token is the row's `xmin` system column: the id of the
//! transaction that wrote the current row version. Every committed UPDATE
//! makes a new row version with a new `xmin`, it needs no extra column, and
//! rows written by the original library have one too.
//!
//! The connection is kept open between calls (the original opened one per
//! commit) with its statements prepared once. When it breaks, the call that
//! notices reconnects and runs again, provided running again cannot apply a
//! write twice or report a false conflict (see `PostgresStore::run` in `store.rs`).
//!
//! Safe SQL: values travel only as bind parameters; the table name appears
//! in SQL only as quoted identifiers built by `table_name::quote_table`.
//!
//! Configuration keys: see `Settings` in `settings.rs` (made by
//! `clojure/duratom/backend/postgres.clj`); an unknown key is an error.
//!
//! Every operation finishes or fails within `timeout-ms` (default 30000),
//! whatever the server or network does: it runs on tokio-postgres under a
//! deadline, and a connection given up on is closed at once. Each store has
//! its own current-thread runtime, so the calling thread drives the socket
//! itself (no hand-off to another thread per round trip); no thread is
//! kept (resolving a host name borrows a short-lived one).
//!
//! The files: `settings.rs` is the configuration as read, `store.rs` checks
//! it, builds the store and runs the operations (and decides when to retry),
//! `connection.rs` connects and prepares the statements, `tls.rs` makes the
//! TLS connector an `sslmode` asks for, `errors.rs` classifies and words the
//! client's errors, `table_name.rs` quotes the table name. `tests.rs` runs
//! against a real server. Apart from `store.rs`, which uses them, each imports only from files listed after it.

mod connection;
mod errors;
mod settings;
mod store;
mod table_name;
mod tls;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub use store::PostgresStore;
use settings::Settings;

const BACKEND: &str = "postgres-db";

/// The TLS connector a duratom uses for `sslmode=prefer` (encrypt when the
/// server offers it, certificate not checked), so that the raw baseline of
/// the benchmark (bench/raw_baselines.rs) connects exactly as a duratom does.
pub fn prefer_tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    tls::tls_connector(tls::TlsMode::Prefer, None)?
        .ok_or_else(|| StoreError::config(BACKEND, "sslmode=prefer made no TLS connector"))
}

/// Opens the row the config names, connecting and creating the table if it is
/// missing, so that a wrong host, password or database fails here, at
/// construction, rather than at the first commit.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    let mut store = PostgresStore::new(config.settings::<Settings>()?)?;
    store.run("open", true, async |_: &mut connection::Conn, _: i64| Ok(()))?;
    Ok(Box::new(store))
}
