//! The s3 backend: not built yet (see the issue tracker).

use crate::config::Config;
use crate::store::StoreError;

pub fn open(config: &Config) -> Result<Box<dyn crate::store::Store>, StoreError> {
    Err(StoreError::config(&config.backend, "this backend is not built yet"))
}
