//! The choice of backend: which store a configuration opens.
//!
//! Kept apart from `config.rs` so that the backends depend on the
//! configuration and nothing depends back on every backend but this.

use crate::config::Config;
use crate::store::{Store, StoreError};

/// Opens the store the config names.
pub fn open_store(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    match config.backend.as_str() {
        "local-file" => crate::file::open(config),
        "postgres-db" => crate::postgres::open(config),
        "aws-s3" => crate::s3::open(config),
        "sqlite-db" => crate::sqlite::open(config),
        "redis-db" => crate::redis::open(config),
        other => Err(StoreError::config(other, format!("unknown backend `{other}`"))),
    }
}
