//! The store: one object in one bucket, built from its settings, and how
//! each operation runs.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration, ServerSideEncryption};
use aws_sdk_s3::Client;

use super::client::{self, ClientOptions};
use super::errors::{describe, is_conflict, retry_kind, status_of, Retry};
use super::settings::{check_user_metadata, validate_bucket_name, Settings};
use super::{BACKEND, DEFAULT_REGION, MAX_ATTEMPTS};
use crate::store::{error_chain, Expect, Resource, Store, StoreError, Stored, Version};

/// What every PutObject carries besides the bytes and the condition.
#[derive(Debug, Default, Clone)]
pub(super) struct PutOptions {
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) user_metadata: Vec<(String, String)>,
}

/// One object in one bucket.
pub struct S3Store {
    pub(super) resource: Resource,
    pub(super) client: Client,
    /// The same client without SDK retries, for conditional writes, which
    /// `commit_async` retries itself (see there).
    pub(super) conditional_client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    /// Where requests go, for error messages: the endpoint URL or the region.
    pub(super) target: String,
    pub(super) timeout: Duration,
    pub(super) put: PutOptions,
}

impl S3Store {
    /// Checks the settings, builds the SDK clients, checks that credentials
    /// exist, and creates the bucket when missing. Fails within about
    /// `timeout-ms` when the endpoint does not answer.
    pub(super) fn open(settings: Settings) -> Result<S3Store, StoreError> {
        let bucket = settings.bucket.ok_or_else(|| StoreError::config(BACKEND, "`bucket` is required"))?;
        validate_bucket_name(&bucket)?;
        let key = settings.key.ok_or_else(|| StoreError::config(BACKEND, "`key` is required"))?;
        if key.is_empty() || key.len() > 1024 {
            return Err(StoreError::config(
                BACKEND,
                format!("the key of bucket `{bucket}` must be 1 to 1024 bytes long, got {} bytes", key.len()),
            ));
        }
        let region = match settings.region {
            Some(r) if r.trim().is_empty() => {
                return Err(StoreError::config(BACKEND, "`region` is empty"));
            }
            r => r.map(|r| r.trim().to_string()),
        };
        let endpoint = match settings.endpoint {
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
        let credentials = match (settings.access_key.as_deref(), settings.secret_key.as_deref()) {
            (None, None) => None,
            (Some(access), Some(secret)) if !access.is_empty() && !secret.is_empty() => Some(Credentials::new(
                access,
                secret,
                settings.session_token.filter(|t| !t.is_empty()),
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
        let timeout_ms = settings.timeout_ms;
        if timeout_ms <= 0 {
            return Err(StoreError::config(BACKEND, format!("`timeout-ms` must be positive, got {timeout_ms}")));
        }
        let sse = match settings.sse.as_deref() {
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
            sse_kms_key_id: settings.sse_kms_key_id,
            content_type: settings.content_type,
            user_metadata: check_user_metadata(settings.user_metadata)?,
        };
        let timeout = Duration::from_millis(timeout_ms as u64);
        let resource = Resource { backend: BACKEND, name: format!("{bucket}/{key}") };
        let options = ClientOptions { region, endpoint, credentials, profile: settings.profile, timeout };
        crate::runtime::block_on(async {
            let clients = client::build(options, &resource).await?;
            let store = S3Store {
                resource: resource.clone(),
                client: clients.client,
                conditional_client: clients.conditional_client,
                bucket,
                key,
                target: clients.target,
                timeout,
                put,
            };
            store.ensure_bucket(clients.region.as_ref()).await?;
            Ok(store)
        })
        .map_err(|e| StoreError::backend(&resource, "starting the I/O runtime", e))?
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
    pub(super) fn fail<E>(&self, op: &str, err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        StoreError::backend(&self.resource, op, describe(err, &self.target, self.timeout))
    }

    /// A failed PutObject: when it, or an earlier attempt of the same commit,
    /// may have been stored (the request went out, no answer came), the
    /// outcome is unknown.
    fn fail_write<E>(&self, err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>, maybe_applied: bool) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        let maybe_applied = maybe_applied || matches!(retry_kind(err), Retry::MaybeApplied);
        if maybe_applied {
            StoreError::outcome_unknown(&self.resource, "writing the object", describe(err, &self.target, self.timeout))
        } else {
            self.fail("writing the object", err)
        }
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
            .map_err(|e| StoreError::backend(&self.resource, "reading the object", error_chain(&e)))?;
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
            Expect::Anything { .. } => put,
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
        if matches!(expect, Expect::Anything { .. }) {
            return match self.put_request(&self.client, bytes, expect).send().await {
                Ok(out) => self.etag_of(&out),
                Err(e) => Err(self.fail_write(&e, false)),
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
                    Some(earlier) => StoreError::outcome_unknown(
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
                return Err(self.fail_write(&err, unknown_outcome.is_some()));
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
