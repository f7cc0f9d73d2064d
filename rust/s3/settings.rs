//! Reading and checking a store's settings from the configuration, before
//! anything touches the network.

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::types::ServerSideEncryption;

use serde::Deserialize;

use super::BACKEND;
use crate::config::Config;
use crate::store::StoreError;

/// What every PutObject carries besides the bytes and the condition.
#[derive(Debug, Default, Clone)]
pub(super) struct PutOptions {
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) user_metadata: Vec<(String, String)>,
}

/// The settings read from the config, before anything touches the network.
pub(super) struct Settings {
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) credentials: Option<Credentials>,
    pub(super) profile: Option<String>,
    pub(super) timeout: Duration,
    pub(super) put: PutOptions,
}

/// The keys an S3 store is configured with (made by
/// `clojure/duratom/backend/s3.clj` from `:credentials`, `:bucket`, `:key`
/// and `:metadata`; the module doc says what each means); any other key is
/// an error at open. Missing keys take the values of [`Default`] below, the
/// one place where defaults live; `bucket` and `key` have none.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    bucket: Option<String>,
    key: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    profile: Option<String>,
    timeout_ms: i64,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    content_type: Option<String>,
    /// `[name value]` pairs: a vector, not a map, because edn-rs gives string
    /// map keys back in Rust's debug quoting (see `crate::config`).
    user_metadata: Vec<(String, String)>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
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

impl Settings {
    pub(super) fn read(config: &Config) -> Result<Settings, StoreError> {
        let keys: Keys = config.settings()?;
        let bucket = keys.bucket.ok_or_else(|| StoreError::config(BACKEND, "`bucket` is required"))?;
        validate_bucket_name(&bucket)?;
        let key = keys.key.ok_or_else(|| StoreError::config(BACKEND, "`key` is required"))?;
        if key.is_empty() || key.len() > 1024 {
            return Err(StoreError::config(
                BACKEND,
                format!("the key of bucket `{bucket}` must be 1 to 1024 bytes long, got {} bytes", key.len()),
            ));
        }
        let region = match keys.region {
            Some(r) if r.trim().is_empty() => {
                return Err(StoreError::config(BACKEND, "`region` is empty"));
            }
            r => r.map(|r| r.trim().to_string()),
        };
        let endpoint = match keys.endpoint {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
            Some(other) => {
                return Err(StoreError::config(
                    BACKEND,
                    format!("`endpoint` must be an http:// or https:// URL, got `{other}`"),
                ))
            }
        };
        // Never put the secret key itself into a message, only whether it is there.
        let credentials = match (keys.access_key.as_deref(), keys.secret_key.as_deref()) {
            (None, None) => None,
            (Some(access), Some(secret)) if !access.is_empty() && !secret.is_empty() => Some(Credentials::new(
                access,
                secret,
                keys.session_token.filter(|t| !t.is_empty()),
                None,
                "duratom :credentials",
            )),
            (Some(""), Some(_)) => {
                return Err(StoreError::config(BACKEND, "the access key in :credentials is empty"))
            }
            (Some(_), Some(_)) => return Err(StoreError::config(BACKEND, "the secret key in :credentials is empty")),
            (Some(_), None) => {
                return Err(StoreError::config(BACKEND, ":credentials give an access key but no secret key"))
            }
            (None, Some(_)) => {
                return Err(StoreError::config(BACKEND, ":credentials give a secret key but no access key"))
            }
        };
        let timeout_ms = keys.timeout_ms;
        if timeout_ms <= 0 {
            return Err(StoreError::config(BACKEND, format!("`timeout-ms` must be positive, got {timeout_ms}")));
        }
        let sse = match keys.sse.as_deref() {
            None => None,
            Some(s) if ServerSideEncryption::values().contains(&s) => Some(ServerSideEncryption::from(s)),
            Some(other) => {
                return Err(StoreError::config(
                    BACKEND,
                    format!(
                        "`sse` (server-side encryption) must be one of {}, got `{other}`",
                        ServerSideEncryption::values().join(", ")
                    ),
                ))
            }
        };
        let put = PutOptions {
            sse,
            sse_kms_key_id: keys.sse_kms_key_id,
            content_type: keys.content_type,
            user_metadata: check_user_metadata(keys.user_metadata)?,
        };
        Ok(Settings {
            bucket,
            key,
            region,
            endpoint,
            credentials,
            profile: keys.profile,
            timeout: Duration::from_millis(timeout_ms as u64),
            put,
        })
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
