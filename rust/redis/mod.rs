//! The Redis backend: one value under one key, through the `redis` crate.
//!
//! The value is stored as the key's string, byte for byte, as the original
//! library's default `:rw` stored it (EDN text written by carmine as a plain
//! string), so keys it wrote load unchanged and ours stay readable by it.
//!
//! Version token: the SHA-1 of the stored bytes, as Redis's Lua computes it
//! (`redis.sha1hex`). A conditional commit is one Lua script that compares
//! the stored value's SHA-1 with the expected one and SETs only if they
//! match; scripts run atomically, so nobody writes in between. "Write only if
//! nothing is stored" is `SET ... NX`. Equal bytes are the same state, so
//! this is exactly the compare of compare-and-set.
//!
//! The connection is kept open, plain or TLS (`rediss://`: rustls with the
//! `ring` provider, over our own stream; see `connection.rs` for why not the
//! crate's TLS); each call, its reconnect and rerun included, ends within
//! `timeout-ms`: every read and write waits only for the time the call has left.
//! When the connection breaks, the call that notices reconnects and, when
//! running again cannot apply a write twice or report a false conflict, runs
//! again; a write whose answer was lost, and that cannot be run again or
//! whose rerun failed too, is reported as `OutcomeUnknown`.
//!
//! Durability is Redis's: a reply means the server applied the write in
//! memory; it is on disk only as the server's `appendonly` / `appendfsync`
//! settings make it (see doc/backends/redis.md).
//!
//! Configuration keys: see `Settings` in `settings.rs` (made by
//! `clojure/duratom/backend/redis.clj`); an unknown key is an error.
//!
//! The files: `settings.rs` is the configuration as read, `store.rs` checks
//! it, builds the store and runs the operations (and decides when to retry),
//! `connection.rs` reads the URL and is one connection (RESP over TCP or
//! TLS), `tls.rs` makes the TLS client configuration, `errors.rs` classifies
//! and words the client's errors. `tests.rs` runs against a real server.
//! Apart from `store.rs`, which uses them, each imports only from files listed after it.

mod connection;
mod errors;
mod settings;
mod store;
mod tls;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub use store::RedisStore;
use settings::Settings;

const BACKEND: &str = "redis-db";

/// Opens the key the config names and connects, so that a wrong host or
/// password fails here, at construction, rather than at the first commit.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    let mut store = RedisStore::new(config.settings::<Settings>()?)?;
    store.conn = Some(store.connect("open", std::time::Instant::now() + store.timeout)?);
    Ok(Box::new(store))
}
