//! The settings an S3 store is configured with, as read from the
//! configuration, and the checks of single values that S3 has rules for;
//! `S3Store::open` (store.rs) checks the rest.

use serde::Deserialize;

use super::BACKEND;
use crate::store::StoreError;

/// The keys an S3 store is configured with (made by
/// `clojure/duratom/backend/s3.clj` from `:credentials`, `:bucket`, `:key`
/// and `:metadata`; the module doc says what each means); any other key is
/// an error at open. Missing keys take the values of [`Default`] below, the
/// one place where defaults live; `bucket` and `key` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Settings {
    pub(super) bucket: Option<String>,
    pub(super) key: Option<String>,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) access_key: Option<String>,
    pub(super) secret_key: Option<String>,
    pub(super) session_token: Option<String>,
    pub(super) profile: Option<String>,
    pub(super) timeout_ms: i64,
    pub(super) sse: Option<String>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) content_type: Option<String>,
    /// `[name value]` pairs: a vector, not a map, because edn-rs gives string
    /// map keys back in Rust's debug quoting (see `crate::config`).
    pub(super) user_metadata: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bucket: None,
            key: None,
            region: None,
            endpoint: None,
            access_key: None,
            secret_key: None,
            session_token: None,
            profile: None,
            // Bounds each operation, retries included.
            timeout_ms: 10_000,
            sse: None,
            sse_kms_key_id: None,
            content_type: None,
            user_metadata: Vec::new(),
        }
    }
}

/// The rules S3 gives for bucket names (general purpose buckets), checked here
/// so that a bad name is a clear error at open rather than an opaque 400 or a
/// DNS failure later.
pub(super) fn validate_bucket_name(bucket: &str) -> Result<(), StoreError> {
    let why = if bucket.len() < 3 || bucket.len() > 63 {
        Some(format!("it must be 3 to 63 characters long, it has {}", bucket.len()))
    } else if let Some(c) =
        bucket.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        Some(format!("it may hold only lower-case letters, digits, `.` and `-`, not `{c}`"))
    } else if !bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        Some("it must begin and end with a letter or digit".to_string())
    } else if bucket.contains("..") {
        Some("it may not hold two adjacent dots".to_string())
    } else if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        Some("it may not look like an IP address".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(StoreError::config(BACKEND, format!("`{bucket}` is not a valid S3 bucket name: {why}"))),
    }
}

/// Checks user metadata names and values; names are sent lower-cased, as
/// S3 keeps them.
pub(super) fn check_user_metadata(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, StoreError> {
    let mut entries = Vec::new();
    for (name, value) in pairs {
        // The name becomes part of a header name (x-amz-meta-<name>), the value a
        // header value; S3 keeps only US-ASCII reliably in both.
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(StoreError::config(
                BACKEND,
                format!("user metadata name `{name}` must be non-empty letters, digits or -_.!#$%&'*+^`|~"),
            ));
        }
        if !value.chars().all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic()) {
            return Err(StoreError::config(
                BACKEND,
                format!("user metadata `{name}` must have a printable US-ASCII value"),
            ));
        }
        entries.push((name.to_ascii_lowercase(), value));
    }
    Ok(entries)
}
