//! Reading and checking a store's settings from the configuration, before
//! anything touches the network.

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::types::ServerSideEncryption;

use super::{BACKEND, DEFAULT_TIMEOUT_MS};
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

impl Settings {
    pub(super) fn read(config: &Config) -> Result<Settings, StoreError> {
        let bucket = config.required("bucket")?.to_string();
        validate_bucket_name(&bucket)?;
        let key = config.required("key")?.to_string();
        if key.is_empty() || key.len() > 1024 {
            return Err(StoreError::config(
                BACKEND,
                format!("the key of bucket `{bucket}` must be 1 to 1024 bytes long, got {} bytes", key.len()),
            ));
        }
        let region = match config.get("region") {
            Some(r) if r.trim().is_empty() => {
                return Err(StoreError::config(BACKEND, "`region` is empty"));
            }
            r => r.map(|r| r.trim().to_string()),
        };
        let endpoint = match config.get("endpoint") {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url.to_string()),
            Some(other) => {
                return Err(StoreError::config(
                    BACKEND,
                    format!("`endpoint` must be an http:// or https:// URL, got `{other}`"),
                ))
            }
        };
        // Never put the secret key itself into a message, only whether it is there.
        let credentials = match (config.get("access-key"), config.get("secret-key")) {
            (None, None) => None,
            (Some(access), Some(secret)) if !access.is_empty() && !secret.is_empty() => Some(Credentials::new(
                access,
                secret,
                config.get("session-token").filter(|t| !t.is_empty()).map(str::to_string),
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
        let timeout_ms = config.number("timeout-ms")?.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms <= 0 {
            return Err(StoreError::config(BACKEND, format!("`timeout-ms` must be positive, got {timeout_ms}")));
        }
        let sse = match config.get("sse") {
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
            sse_kms_key_id: config.get("sse-kms-key-id").map(str::to_string),
            content_type: config.get("content-type").map(str::to_string),
            user_metadata: parse_user_metadata(config.get("user-metadata").unwrap_or(""))?,
        };
        Ok(Settings {
            bucket,
            key,
            region,
            endpoint,
            credentials,
            profile: config.get("profile").map(str::to_string),
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

/// Reads the `user-metadata` encoding: lines of `name=value`.
pub(super) fn parse_user_metadata(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut entries = Vec::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once('=').ok_or_else(|| {
            StoreError::config(BACKEND, format!("user metadata entry `{line}` is not of the form name=value"))
        })?;
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
        entries.push((name.to_ascii_lowercase(), value.to_string()));
    }
    Ok(entries)
}
