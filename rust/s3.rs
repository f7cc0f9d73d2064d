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
//! Configuration keys (flat strings; `clojure/duratom/backend/s3.clj` makes
//! them from the user's `:credentials`, `:bucket`, `:key` and `:metadata`):
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
//! |                  | (environment, profile files, SSO, web identity, ECS, EC2 IMDS)  |
//! | `secret-key`     | never appears in any error message                              |
//! | `session-token`  | optional                                                        |
//! | `profile`        | a named profile of the AWS config files, for the default chain  |
//! | `timeout-ms`     | default 10000: bounds each operation, retries included          |
//! | `sse`            | server-side encryption: `AES256`, `aws:kms`, `aws:kms:dsse`     |
//! | `sse-kms-key-id` | the KMS key for `aws:kms`                                       |
//! | `content-type`   | the object's Content-Type                                       |
//! | `user-metadata`  | user metadata (`x-amz-meta-<name>`), as lines `name=value`      |
//! |                  | joined by `\n`; a name is an HTTP token, so it holds no `=`,     |
//! |                  | and header values hold no newline: the encoding is unambiguous  |
//!
//! User metadata travels in one key because `Config` offers lookups by name
//! only, not a listing of the keys present.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration, ServerSideEncryption};
use aws_sdk_s3::Client;

use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

const BACKEND: &str = "aws-s3";
const DEFAULT_TIMEOUT_MS: i64 = 10_000;
/// S3's own default region, and the one where a bucket is created without a
/// location constraint.
const DEFAULT_REGION: &str = "us-east-1";
/// Three attempts: enough to ride out a dropped connection or a 503, few
/// enough that a dead endpoint fails fast.
const MAX_ATTEMPTS: u32 = 3;

/// Opens the store the config names (see the module doc for the keys).
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(S3Store::open(config)?))
}

/// One object in one bucket.
pub struct S3Store {
    resource: Resource,
    client: Client,
    /// The same client without SDK retries, for conditional writes, which
    /// `commit_async` retries itself (see there).
    conditional_client: Client,
    bucket: String,
    key: String,
    /// Where requests go, for error messages: the endpoint URL or the region.
    target: String,
    timeout: Duration,
    put: PutOptions,
}

/// What every PutObject carries besides the bytes and the condition.
#[derive(Debug, Default, Clone)]
struct PutOptions {
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    content_type: Option<String>,
    user_metadata: Vec<(String, String)>,
}

/// The settings read from the config, before anything touches the network.
struct Settings {
    bucket: String,
    key: String,
    region: Option<String>,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    profile: Option<String>,
    timeout: Duration,
    put: PutOptions,
}

impl Settings {
    fn read(config: &Config) -> Result<Settings, StoreError> {
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
fn validate_bucket_name(bucket: &str) -> Result<(), StoreError> {
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
fn parse_user_metadata(text: &str) -> Result<Vec<(String, String)>, StoreError> {
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

impl S3Store {
    /// Builds the client, checks that credentials exist, and creates the
    /// bucket when missing. Fails within about `timeout-ms` when the endpoint
    /// does not answer.
    pub fn open(config: &Config) -> Result<S3Store, StoreError> {
        let s = Settings::read(config)?;
        let resource = Resource { backend: BACKEND, name: format!("{}/{}", s.bucket, s.key) };
        crate::runtime::block_on(Self::open_async(s, resource.clone()))
            .map_err(|e| StoreError::backend(&resource, "starting the I/O runtime", e))?
    }

    async fn open_async(s: Settings, resource: Resource) -> Result<S3Store, StoreError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(s.timeout)
            .operation_attempt_timeout(s.timeout)
            .operation_timeout(s.timeout)
            .build();
        // Short backoff: the whole operation, retries included, has to fit in
        // `timeout`, and a retry is only useful for quick failures anyway.
        let retries = RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(1));
        let region = match (&s.region, &s.endpoint) {
            (Some(r), _) => Region::new(r.clone()),
            (None, Some(_)) => Region::from_static(DEFAULT_REGION),
            // The default chain reads AWS_REGION, the profile, and on EC2 the
            // instance metadata; bounded like everything else.
            (None, None) => tokio::time::timeout(
                s.timeout,
                RegionProviderChain::default_provider().or_else(Region::from_static(DEFAULT_REGION)).region(),
            )
            .await
            .ok()
            .flatten()
            .unwrap_or(Region::from_static(DEFAULT_REGION)),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(url) = &s.endpoint {
            loader = loader.endpoint_url(url);
        }
        if let Some(creds) = s.credentials.clone() {
            loader = loader.credentials_provider(creds);
        }
        if let Some(profile) = &s.profile {
            loader = loader.profile_name(profile);
        }
        let shared = loader.load().await;
        let target = match &s.endpoint {
            Some(url) => url.clone(),
            None => format!("AWS S3 in {region}"),
        };

        check_credentials(&shared, &resource, s.timeout).await?;

        let conf = aws_sdk_s3::config::Builder::from(&shared)
            // A custom endpoint (MinIO, a test server) rarely has a wildcard DNS
            // name per bucket; AWS itself wants virtual-hosted style.
            .force_path_style(s.endpoint.is_some())
            // Recent SDKs add CRC checksums to every request; several
            // S3-compatible servers reject them. S3 needs them only where an
            // operation requires one.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let conditional_conf = conf.to_builder().retry_config(RetryConfig::disabled()).build();
        let store = S3Store {
            resource,
            client: Client::from_conf(conf),
            conditional_client: Client::from_conf(conditional_conf),
            bucket: s.bucket,
            key: s.key,
            target,
            timeout: s.timeout,
            put: s.put,
        };
        store.ensure_bucket(region.as_ref()).await?;
        Ok(store)
    }

    async fn ensure_bucket(&self, region: &str) -> Result<(), StoreError> {
        let err = match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if status_of(&err) != Some(404) {
            return Err(self.fail("checking that the bucket exists", &err));
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        if region != DEFAULT_REGION {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            // Another process created it between our check and our create.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(()),
            Err(e) => Err(self.fail("creating the missing bucket", &e)),
        }
    }

    /// A backend error whose detail says what the server or the network said.
    fn fail<E>(&self, op: &str, err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        StoreError::backend(&self.resource, op, describe(err, &self.target, self.timeout))
    }

    async fn load_async(&self) -> Result<Option<Stored>, StoreError> {
        let out = match self.client.get_object().bucket(&self.bucket).key(&self.key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.fail("reading the object", &e)),
        };
        let etag = out
            .e_tag()
            .map(str::to_string)
            .ok_or_else(|| StoreError::backend(&self.resource, "reading the object", "the server sent no ETag"))?;
        // The SDK's operation timeout ends when the response headers arrive; the
        // body of a large value is bounded here.
        let body = tokio::time::timeout(self.timeout, out.body.collect())
            .await
            .map_err(|_| {
                StoreError::backend(
                    &self.resource,
                    "reading the object",
                    format!("timed out after {} ms reading the body from {}", self.timeout.as_millis(), self.target),
                )
            })?
            .map_err(|e| StoreError::backend(&self.resource, "reading the object", chain(&e)))?;
        Ok(Some(Stored { bytes: body.into_bytes().to_vec(), version: Version(etag) }))
    }

    /// One PutObject of `bytes` under `expect`, through `client`.
    fn put_request(
        &self,
        client: &Client,
        bytes: &[u8],
        expect: &Expect,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let mut put = client.put_object().bucket(&self.bucket).key(&self.key).body(ByteStream::from(bytes.to_vec()));
        put = match expect {
            Expect::Anything => put,
            Expect::Nothing => put.if_none_match("*"),
            Expect::Version(v) => put.if_match(&v.0),
        };
        if let Some(sse) = &self.put.sse {
            put = put.server_side_encryption(sse.clone());
        }
        if let Some(id) = &self.put.sse_kms_key_id {
            put = put.ssekms_key_id(id);
        }
        if let Some(ct) = &self.put.content_type {
            put = put.content_type(ct);
        }
        for (name, value) in &self.put.user_metadata {
            put = put.metadata(name, value);
        }
        put
    }

    fn etag_of(&self, out: &aws_sdk_s3::operation::put_object::PutObjectOutput) -> Result<Version, StoreError> {
        out.e_tag()
            .map(|t| Version(t.to_string()))
            .ok_or_else(|| StoreError::backend(&self.resource, "writing the object", "the server sent no ETag"))
    }

    /// An unconditional write is idempotent and uses the SDK's retries. A
    /// conditional one retries here, because a retry after a lost response
    /// (the server stored the object, the answer never came) meets the ETag
    /// that very attempt created and is refused: reported as a conflict, the
    /// caller would apply its update a second time on top of itself. So a
    /// refusal that follows an attempt of unknown outcome is reported as an
    /// error saying so, never as a conflict.
    async fn commit_async(&self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        if *expect == Expect::Anything {
            return match self.put_request(&self.client, bytes, expect).send().await {
                Ok(out) => self.etag_of(&out),
                Err(e) => Err(self.fail("writing the object", &e)),
            };
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        let mut unknown_outcome: Option<String> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let err = match self.put_request(&self.conditional_client, bytes, expect).send().await {
                Ok(out) => return self.etag_of(&out),
                Err(e) => e,
            };
            if is_conflict(&err, expect) {
                return Err(match unknown_outcome {
                    None => StoreError::Conflict { resource: self.resource.clone() },
                    Some(earlier) => StoreError::backend(
                        &self.resource,
                        "writing the object",
                        format!(
                            "outcome unknown: an attempt failed ({earlier}) and the retry found the object \
                             changed, possibly by that attempt; reload before writing again"
                        ),
                    ),
                });
            }
            let retry = match retry_kind(&err) {
                Retry::No => false,
                Retry::NotSent => true,
                Retry::MaybeApplied => {
                    unknown_outcome = Some(describe(&err, &self.target, self.timeout));
                    true
                }
            };
            if !retry || attempt == MAX_ATTEMPTS || tokio::time::Instant::now() + backoff >= deadline {
                return Err(self.fail("writing the object", &err));
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        unreachable!("the last attempt returns")
    }

    async fn delete_async(&self) -> Result<(), StoreError> {
        match self.client.delete_object().bucket(&self.bucket).key(&self.key).send().await {
            Ok(_) => Ok(()),
            // S3 answers 204 for a missing key; some compatible servers say 404.
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.fail("deleting the object", &e)),
        }
    }

    fn run<T>(&self, op: &str, f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        crate::runtime::block_on(f).map_err(|e| StoreError::backend(&self.resource, op, e))?
    }
}

impl Store for S3Store {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.run("reading the object", self.load_async())
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        self.run("writing the object", self.commit_async(bytes, expect))
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        self.run("deleting the object", self.delete_async())
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// Asks the credential provider once at open, so that "no credentials
/// anywhere" is a clear error at construction rather than at the first write.
async fn check_credentials(
    shared: &aws_config::SdkConfig,
    resource: &Resource,
    timeout: Duration,
) -> Result<(), StoreError> {
    let none_found = |why: Option<String>| {
        StoreError::config(
            BACKEND,
            format!(
                "no AWS credentials found for {}: give :access-key and :secret-key in :credentials, \
                 or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure an AWS profile{}",
                resource.name,
                why.map(|w| format!(" (the default credential chain said: {w})")).unwrap_or_default()
            ),
        )
    };
    let provider = shared.credentials_provider().ok_or_else(|| none_found(None))?;
    match tokio::time::timeout(timeout, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => Err(none_found(None)),
        // The chain ends with EC2 instance metadata; off EC2 that answers with
        // an error rather than "not loaded" (e.g. 403 from a proxy), which
        // still means: no credentials anywhere. Keep what it said.
        Ok(Err(e)) => Err(none_found(Some(chain(&e)))),
        // Off EC2, the instance metadata address may swallow packets.
        Err(_) => Err(none_found(Some(format!("no answer within {} ms (timeout-ms)", timeout.as_millis())))),
    }
}

fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

/// Whether a refused PutObject means "the condition did not hold".
fn is_conflict<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    expect: &Expect,
) -> bool {
    let code = match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    };
    match (status_of(err), expect) {
        (_, Expect::Anything) => false,
        (Some(412), _) => true,
        // Two conditional writes to one key raced; the other one won.
        (Some(409), _) => code == Some("ConditionalRequestConflict"),
        // If-Match on a key that no longer exists: the version we expect is gone.
        (Some(404), Expect::Version(_)) => code == Some("NoSuchKey"),
        _ => false,
    }
}

/// Whether a failed conditional PutObject may be tried again, and whether
/// the failed attempt may nonetheless have been stored.
enum Retry {
    No,
    /// The request never reached the server, or the server says it did
    /// nothing (503 Slow Down).
    NotSent,
    /// A timeout, a connection lost after connecting, or a 5xx other than
    /// 503: the server may have stored the object.
    MaybeApplied,
}

fn retry_kind<E: StdError + 'static>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Retry {
    match err {
        SdkError::DispatchFailure(_) if refused(err) => Retry::NotSent,
        SdkError::DispatchFailure(d) if d.is_user() => Retry::No,
        // Includes hyper's "connection closed before message completed": the
        // request may have been sent whole.
        SdkError::DispatchFailure(_) => Retry::MaybeApplied,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Retry::MaybeApplied,
        SdkError::ServiceError(s) => match s.raw().status().as_u16() {
            503 => Retry::NotSent,
            500 | 502 | 504 => Retry::MaybeApplied,
            _ => Retry::No,
        },
        _ => Retry::No,
    }
}

/// A one-line account of an SDK failure: the service's code and message, or
/// what went wrong on the way (refused, timed out, ...), then the chain of
/// causes. Credentials never appear in SDK errors.
fn describe<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>, target: &str, timeout: Duration) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let context = chain(err);
    match err {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (s.err().code(), s.err().message()) {
                (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
                (Some(code), None) => format!("HTTP {status} {code}"),
                // HEAD responses have no body, hence no code: name the status.
                _ if status == 403 => "HTTP 403 access denied (wrong credentials, or not your bucket)".to_string(),
                _ if status == 301 => "HTTP 301: the bucket is in another region than the one configured".to_string(),
                _ => format!("HTTP {status}: {context}"),
            }
        }
        SdkError::TimeoutError(_) => {
            format!("timed out after {} ms (timeout-ms) waiting for {target}", timeout.as_millis())
        }
        SdkError::DispatchFailure(d) => {
            if refused(err) {
                format!("connection refused by {target} ({context})")
            } else if d.is_timeout() {
                format!("timed out connecting to {target} ({context})")
            } else if d.is_io() {
                format!("could not reach {target} ({context})")
            } else {
                format!("request to {target} failed ({context})")
            }
        }
        SdkError::ResponseError(_) => format!("unreadable response from {target} ({context})"),
        SdkError::ConstructionFailure(_) => format!("could not build the request ({context})"),
        _ => context,
    }
}

/// An error and its causes, `outer: inner: ...`. (The SDK's
/// `DisplayErrorContext` appends a Debug dump of the whole error, which is
/// noise in a message meant for people.)
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(err);
    while let Some(e) = cause {
        let text = e.to_string();
        // Wrappers often repeat their cause's text; say each thing once.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

/// Whether the cause chain holds an OS "connection refused".
fn refused(err: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

/// These run against a real S3-compatible server: `scripts/s3-server start DIR`
/// starts one and writes the variables to `DIR/env`.
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    struct Server {
        endpoint: String,
        access_key: String,
        secret_key: String,
        region: String,
    }

    fn server() -> Server {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set. These tests need a local S3 server: run \
                     `scripts/s3-server start /tmp/s3test && . /tmp/s3test/env` first"
                )
            })
        };
        Server {
            endpoint: var("DURATOM_TEST_S3_ENDPOINT"),
            access_key: var("DURATOM_TEST_S3_ACCESS_KEY"),
            secret_key: var("DURATOM_TEST_S3_SECRET_KEY"),
            region: var("DURATOM_TEST_S3_REGION"),
        }
    }

    /// A bucket name no earlier run on the same server has used.
    fn fresh_bucket(what: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("dt-{what}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    fn config(bucket: &str, key: &str, extra: &[(&str, &str)]) -> Config {
        let s = server();
        let mut pairs = vec![
            ("bucket", bucket),
            ("key", key),
            ("endpoint", s.endpoint.as_str()),
            ("region", s.region.as_str()),
            ("access-key", s.access_key.as_str()),
            ("secret-key", s.secret_key.as_str()),
        ];
        pairs.extend_from_slice(extra);
        Config::from_pairs(BACKEND, &pairs)
    }

    fn open_store(bucket: &str, key: &str) -> S3Store {
        S3Store::open(&config(bucket, key, &[])).unwrap_or_else(|e| panic!("open {bucket}/{key}: {e}"))
    }

    fn bucket_exists(store: &S3Store) -> bool {
        crate::runtime::block_on(store.client.head_bucket().bucket(&store.bucket).send()).unwrap().is_ok()
    }

    #[test]
    fn creates_the_missing_bucket_and_a_missing_key_is_nothing_stored() {
        let bucket = fresh_bucket("create");
        let mut store = open_store(&bucket, "state/0");
        assert!(bucket_exists(&store), "open should have created {bucket}");
        assert_eq!(store.resource().to_string(), format!("aws-s3 {bucket}/state/0"));
        assert!(store.load().unwrap().is_none());
        // Opening again finds the bucket there and leaves it be.
        let mut again = open_store(&bucket, "state/0");
        assert!(again.load().unwrap().is_none());
    }

    #[test]
    fn creates_a_bucket_with_a_location_constraint_outside_us_east_1() {
        let bucket = fresh_bucket("region");
        let store = S3Store::open(&config(&bucket, "k", &[("region", "eu-west-1")])).unwrap();
        let location = crate::runtime::block_on(store.client.get_bucket_location().bucket(&bucket).send())
            .unwrap()
            .unwrap();
        assert_eq!(location.location_constraint().map(|c| c.as_str()), Some("eu-west-1"));
    }

    #[test]
    fn round_trips_small_and_20_mb_values_with_the_etag_as_version() {
        let bucket = fresh_bucket("roundtrip");
        let mut store = open_store(&bucket, "state/0");
        let v1 = store.commit("{:x 1, :s \"héllo 🌍\"}".as_bytes(), &Expect::Anything).unwrap();
        let got = store.load().unwrap().unwrap();
        assert_eq!(got.bytes, "{:x 1, :s \"héllo 🌍\"}".as_bytes());
        assert_eq!(got.version, v1);

        // 20 MB of varied bytes (so no layer can get away with compressing it).
        let mut big = vec![0u8; 20 * 1024 * 1024];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in big.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let v2 = store.commit(&big, &Expect::Version(v1.clone())).unwrap();
        assert_ne!(v2, v1);
        let mut reopened = open_store(&bucket, "state/0");
        let got = reopened.load().unwrap().unwrap();
        assert!(got.bytes == big, "the 20 MB value came back different ({} bytes)", got.bytes.len());
        assert_eq!(got.version, v2);
    }

    #[test]
    fn a_stale_etag_or_create_over_an_existing_object_is_a_conflict() {
        let bucket = fresh_bucket("conflict");
        let mut a = open_store(&bucket, "shared");
        let mut b = open_store(&bucket, "shared");
        let v1 = a.commit(b"1", &Expect::Nothing).unwrap();
        // b read v1, a writes v2, b's write conditioned on v1 must be refused.
        assert_eq!(b.load().unwrap().unwrap().version, v1);
        let v2 = a.commit(b"2", &Expect::Version(v1.clone())).unwrap();
        match b.commit(b"3", &Expect::Version(v1.clone())) {
            Err(StoreError::Conflict { resource }) => assert_eq!(resource.name, format!("{bucket}/shared")),
            other => panic!("a stale ETag must be a conflict, got {other:?}"),
        }
        match b.commit(b"4", &Expect::Nothing) {
            Err(StoreError::Conflict { .. }) => {}
            other => panic!("If-None-Match on an existing object must be a conflict, got {other:?}"),
        }
        // Nothing of the refused writes landed.
        let now = b.load().unwrap().unwrap();
        assert_eq!((now.bytes.as_slice(), &now.version), (&b"2"[..], &v2));
        // With the current ETag the write goes through.
        b.commit(b"5", &Expect::Version(v2)).unwrap();
        assert_eq!(a.load().unwrap().unwrap().bytes, b"5");
    }

    #[test]
    fn delete_removes_the_object_and_deleting_nothing_is_fine() {
        let bucket = fresh_bucket("delete");
        let mut store = open_store(&bucket, "gone");
        let v = store.commit(b"{}", &Expect::Anything).unwrap();
        store.delete().unwrap();
        assert!(store.load().unwrap().is_none());
        store.delete().unwrap();
        // A write expecting the deleted version is refused, creating works.
        assert!(matches!(store.commit(b"x", &Expect::Version(v)), Err(StoreError::Conflict { .. })));
        store.commit(b"y", &Expect::Nothing).unwrap();
        assert_eq!(store.load().unwrap().unwrap().bytes, b"y");
    }

    #[test]
    fn writes_carry_user_metadata_encryption_and_content_type() {
        let bucket = fresh_bucket("meta");
        let cfg = config(
            &bucket,
            "m",
            &[("user-metadata", "owner=team-a\nPurpose=state of x"), ("sse", "AES256"), ("content-type", "application/edn")],
        );
        let mut store = S3Store::open(&cfg).unwrap();
        store.commit(b"{:a 1}", &Expect::Anything).unwrap();
        let head =
            crate::runtime::block_on(store.client.head_object().bucket(&bucket).key("m").send()).unwrap().unwrap();
        let meta = head.metadata().cloned().unwrap_or_default();
        assert_eq!(meta.get("owner").map(String::as_str), Some("team-a"), "{meta:?}");
        assert_eq!(meta.get("purpose").map(String::as_str), Some("state of x"), "{meta:?}");
        assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        assert_eq!(head.content_type(), Some("application/edn"));
    }

    /// Runs this test binary again, only the test `name`, in a child process
    /// whose AWS environment is exactly `env` (plus an empty HOME, so no
    /// profile files are found). Credentials from the environment can only be
    /// tested this way: setting variables in this process would race with the
    /// other tests' threads.
    fn run_child(name: &str, env: &[(&str, &str)]) {
        let home = tempfile::tempdir().unwrap();
        let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"]);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", home.path())
            // No EC2 instance metadata unless a test asks for it (`env` below
            // overrides): what the address does off EC2 depends on the network.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("DURATOM_S3_TEST_CHILD", name)
            .envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child test {test} failed:\n{text}");
        assert!(text.contains("1 passed"), "child test {test} did not run:\n{text}");
    }

    fn in_child(name: &str) -> bool {
        std::env::var("DURATOM_S3_TEST_CHILD").as_deref() == Ok(name)
    }

    #[test]
    fn credentials_from_the_environment_when_no_access_key_is_given() {
        let s = server();
        let name = "credentials_from_the_environment_when_no_access_key_is_given";
        if !in_child(name) {
            run_child(name, &[("AWS_ACCESS_KEY_ID", &s.access_key), ("AWS_SECRET_ACCESS_KEY", &s.secret_key)]);
            return;
        }
        let bucket = fresh_bucket("envcreds");
        let cfg = Config::from_pairs(
            BACKEND,
            &[("bucket", &bucket), ("key", "k"), ("endpoint", &s.endpoint), ("region", &s.region)],
        );
        let mut store = S3Store::open(&cfg).unwrap();
        store.commit(b"from env", &Expect::Anything).unwrap();
        assert_eq!(store.load().unwrap().unwrap().bytes, b"from env");
    }

    #[test]
    fn no_credentials_anywhere_is_a_clear_error_at_open() {
        let s = server();
        let name = "no_credentials_anywhere_is_a_clear_error_at_open";
        if !in_child(name) {
            // Nothing in the environment or profiles, and the last source of
            // the chain, EC2 instance metadata, in each of its states here:
            // disabled, refusing, and silent (which only the timeout ends).
            run_child(name, &[]);
            let refusing = format!("http://127.0.0.1:{}", closed_port());
            run_child(name, &[("AWS_EC2_METADATA_DISABLED", "false"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &refusing)]);
            let silent = TcpListener::bind("127.0.0.1:0").unwrap();
            let silent_url = format!("http://{}", silent.local_addr().unwrap());
            run_child(name, &[("AWS_EC2_METADATA_DISABLED", "false"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &silent_url)]);
            return;
        }
        let cfg = Config::from_pairs(
            BACKEND,
            &[
                ("bucket", "dt-nocreds"),
                ("key", "k"),
                ("endpoint", &s.endpoint),
                ("region", &s.region),
                ("timeout-ms", "2000"),
            ],
        );
        let start = Instant::now();
        let err = S3Store::open(&cfg).err().expect("open must fail without credentials");
        let took = start.elapsed();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Config { .. }), "{err:?}");
        assert!(msg.contains("no AWS credentials found for dt-nocreds/k"), "{msg}");
        assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
        assert!(took < Duration::from_secs(4), "took {took:?}: {msg}");
        println!("child saw, after {took:?}: {msg}");
    }

    /// A port on which nothing listens: bind one, then let it go.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn a_refusing_endpoint_fails_at_open_quickly_and_clearly() {
        let secret = "s3cr3t-never-shown";
        let endpoint = format!("http://127.0.0.1:{}", closed_port());
        let cfg = Config::from_pairs(
            BACKEND,
            &[
                ("bucket", "dt-dead"),
                ("key", "k"),
                ("endpoint", &endpoint),
                ("access-key", "AKIDEXAMPLE"),
                ("secret-key", secret),
                ("timeout-ms", "3000"),
            ],
        );
        let start = Instant::now();
        let err = S3Store::open(&cfg).err().expect("open must fail");
        let took = start.elapsed();
        let msg = err.to_string();
        assert!(took < Duration::from_secs(4), "took {took:?}: {msg}");
        assert!(msg.contains("aws-s3 dt-dead/k"), "{msg}");
        assert!(msg.contains(&format!("connection refused by {endpoint}")), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
    }

    #[test]
    fn a_silent_endpoint_fails_within_the_timeout() {
        // It accepts connections (the kernel completes the handshake into the
        // backlog) but never answers: the case a timeout exists for.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let cfg = Config::from_pairs(
            BACKEND,
            &[
                ("bucket", "dt-silent"),
                ("key", "k"),
                ("endpoint", &endpoint),
                ("access-key", "AKIDEXAMPLE"),
                ("secret-key", "x"),
                ("timeout-ms", "1500"),
            ],
        );
        let start = Instant::now();
        let err = S3Store::open(&cfg).err().expect("open must fail");
        let took = start.elapsed();
        let msg = err.to_string();
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "took {took:?}: {msg}");
        assert!(msg.contains("aws-s3 dt-silent/k"), "{msg}");
        assert!(msg.contains("timed out"), "{msg}");
        drop(silent);
    }

    #[test]
    fn an_operation_on_a_store_whose_server_went_away_names_bucket_and_key() {
        // Open against the real server, then point the same bucket at a dead
        // port: what a swap! sees when the server dies under it.
        let bucket = fresh_bucket("gone");
        let mut store = open_store(&bucket, "k");
        store.commit(b"1", &Expect::Anything).unwrap();
        let dead = format!("http://127.0.0.1:{}", closed_port());
        let conf = store.client.config().to_builder().endpoint_url(&dead).build();
        store.client = Client::from_conf(conf.clone());
        store.conditional_client = Client::from_conf(conf.to_builder().retry_config(RetryConfig::disabled()).build());
        store.target = dead.clone();
        let err = store.commit(b"2", &Expect::Anything).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("aws-s3 {bucket}/k: writing the object failed: connection refused")), "{msg}");
        // A conditional write to a refusing server: retried, then the same error.
        let msg = store.commit(b"3", &Expect::Nothing).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("aws-s3 {bucket}/k: writing the object failed: connection refused")), "{msg}");
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("reading the object failed: connection refused"), "{err}");
    }

    /// A TCP proxy to `upstream` that, on its first connection, lets the
    /// request through and then hangs up as soon as the answer starts: the
    /// server did the work, the client never hears of it.
    fn proxy_losing_the_first_response(upstream: &str) -> String {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpStream};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(mut client) = client else { return };
                let mut server = TcpStream::connect(&upstream).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                if n == 0 {
                    let mut first = [0u8; 1];
                    let _ = server.read(&mut first); // the server has answered
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                } else {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut server, &mut client);
                        let _ = client.flush();
                        let _ = client.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        url
    }

    #[test]
    fn a_conditional_write_whose_answer_was_lost_is_not_reported_as_a_conflict() {
        let bucket = fresh_bucket("lost");
        let mut store = open_store(&bucket, "k");
        let proxy = proxy_losing_the_first_response(&server().endpoint);
        let conf = store.conditional_client.config().to_builder().endpoint_url(&proxy).build();
        store.conditional_client = Client::from_conf(conf);
        // The create lands, its answer is lost, the retry is refused (412): a
        // conflict would make the caller apply its update twice.
        let err = store.commit(b"mine", &Expect::Nothing).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
        assert!(msg.contains("outcome unknown"), "{msg}");
        assert_eq!(store.load().unwrap().unwrap().bytes, b"mine");
        // Through the proxy, now passing answers, a stale create is a conflict.
        assert!(matches!(store.commit(b"again", &Expect::Nothing), Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn invalid_bucket_names_are_config_errors_naming_the_bucket() {
        for bad in ["My_Bucket", "ab", &"a".repeat(64), "-abc", "abc-", "a..b", "192.168.1.1", "UPPER"] {
            let cfg = Config::from_pairs(BACKEND, &[("bucket", bad), ("key", "k"), ("access-key", "a"), ("secret-key", "b")]);
            match S3Store::open(&cfg) {
                Err(e @ StoreError::Config { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("`{bad}` is not a valid S3 bucket name")), "{msg}");
                }
                Err(e) => panic!("{bad}: expected a config error, got {e:?}"),
                Ok(_) => panic!("{bad} was accepted"),
            }
        }
        validate_bucket_name("my-bucket.v2").unwrap();
    }

    #[test]
    fn other_bad_settings_are_config_errors() {
        let secret = "s3cr3t-never-shown";
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("secret-key", secret)], "secret key but no access key"),
            (vec![("access-key", "a")], "access key but no secret key"),
            (vec![("access-key", "a"), ("secret-key", secret), ("endpoint", "127.0.0.1:9000")], "http:// or https:// URL"),
            (vec![("access-key", "a"), ("secret-key", secret), ("timeout-ms", "0")], "`timeout-ms` must be positive"),
            (vec![("access-key", "a"), ("secret-key", secret), ("sse", "ROT13")], "`sse`"),
            (vec![("access-key", "a"), ("secret-key", secret), ("user-metadata", "no-equals")], "name=value"),
            (vec![("access-key", "a"), ("secret-key", secret), ("user-metadata", "a b=c")], "user metadata name `a b`"),
            (vec![("access-key", "a"), ("secret-key", secret), ("user-metadata", "a=é")], "printable US-ASCII"),
            (vec![("access-key", "a"), ("secret-key", secret)], "`key` is required"),
        ];
        for (extra, expected) in cases {
            let mut pairs = vec![("bucket", "dt-bad")];
            if expected != "`key` is required" {
                pairs.push(("key", "k"));
            }
            pairs.extend(extra.iter().copied());
            let err = S3Store::open(&Config::from_pairs(BACKEND, &pairs)).err().expect("must fail");
            let msg = err.to_string();
            assert!(matches!(err, StoreError::Config { .. }), "{msg}");
            assert!(msg.contains(expected), "expected `{expected}` in: {msg}");
            assert!(!msg.contains(secret), "{msg}");
        }
    }

    #[test]
    fn user_metadata_lines_parse_to_pairs() {
        assert_eq!(
            parse_user_metadata("a=1\nB-c=x=y\n").unwrap(),
            vec![("a".to_string(), "1".to_string()), ("b-c".to_string(), "x=y".to_string())]
        );
        assert!(parse_user_metadata("").unwrap().is_empty());
    }
}
