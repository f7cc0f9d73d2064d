//! The aws-s3 backend: the value is one object, on AWS or any S3-compatible
//! store (MinIO, Ceph, R2, a local test server).
//!
//! It goes through the official SDK (`aws-sdk-s3`), driven by the library's
//! shared tokio runtime (`crate::runtime`); every call blocks the calling JVM
//! thread until the request is done.
//!
//! The version token is the object's ETag. A conditional commit is a
//! conditional PutObject: `If-Match: <etag>` when a version is expected,
//! `If-None-Match: *` when nothing is. The server refuses a stale condition
//! with 412 PreconditionFailed (or 409 ConditionalRequestConflict when two
//! such writes race, or 404 when the expected object is gone); all of these
//! are `StoreError::Conflict`. An ETag is a digest of the content, so after
//! X -> Y -> X the ETag of X matches again; for a duratom that is still a
//! correct compare-and-set, because the stored value is exactly the one the
//! writer read.
//!
//! Configuration keys (an EDN map, see `crate::config`;
//! `clojure/duratom/backend/s3.clj` makes it from the user's `:credentials`,
//! `:bucket`, `:key` and `:metadata`; any other key is an error at open):
//!
//! | key              | meaning                                                         |
//! |------------------|-----------------------------------------------------------------|
//! | `bucket`         | required; created at open when missing                          |
//! | `key`            | required; the object key                                        |
//! | `region`         | e.g. `eu-west-1`; default: us-east-1 when `endpoint` is given,  |
//! |                  | otherwise the AWS default region chain, then us-east-1          |
//! | `endpoint`       | an `http://` or `https://` URL of an S3-compatible server;      |
//! |                  | path-style addressing is used with it                           |
//! | `access-key`     | with `secret-key` (and optional `session-token`): static        |
//! |                  | credentials; absent = the AWS default credential chain          |
//! |                  | (environment, profile files, web identity, ECS, EC2 IMDS)       |
//! | `secret-key`     | never appears in any error message                              |
//! | `session-token`  | optional                                                        |
//! | `profile`        | a named profile of the AWS config files, for the default chain  |
//! | `timeout-ms`     | default 10000: bounds each operation, retries included          |
//! | `sse`            | server-side encryption: `AES256`, `aws:kms`, `aws:kms:dsse`     |
//! | `sse-kms-key-id` | the KMS key for `aws:kms`                                       |
//! | `content-type`   | the object's Content-Type                                       |
//! | `user-metadata`  | user metadata (`x-amz-meta-<name>`), a vector of `[name value]` |
//! |                  | pairs of strings                                                |
//!
//! The files: `settings.rs` is the configuration as read, `store.rs` checks
//! it, builds the store (creating a missing bucket) and runs the operations
//! (and retries conditional writes itself), `client.rs` builds the SDK
//! clients and checks credentials at open, `errors.rs` classifies and words
//! the SDK's errors. `tests.rs` runs against a real S3-compatible server.

mod client;
mod errors;
mod settings;
mod store;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub use store::S3Store;
use settings::Settings;

const BACKEND: &str = "aws-s3";
/// S3's own default region, and the one where a bucket is created without a
/// location constraint.
const DEFAULT_REGION: &str = "us-east-1";
/// Three attempts: enough to ride out a dropped connection or a 503, few
/// enough that a dead endpoint fails fast.
const MAX_ATTEMPTS: u32 = 3;

/// Opens the store the config names (see the module doc for the keys).
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(S3Store::open(config.settings::<Settings>()?)?))
}
