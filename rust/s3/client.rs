//! Building the SDK clients of a store, and checking at open that
//! credentials exist.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::Client;

use super::{BACKEND, DEFAULT_REGION, MAX_ATTEMPTS};
use crate::store::{error_chain, Resource, StoreError};

/// Where, and as whom, the clients connect: checked settings.
pub(super) struct ClientOptions {
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) credentials: Option<Credentials>,
    pub(super) profile: Option<String>,
    pub(super) timeout: Duration,
}

/// The SDK clients of one store.
pub(super) struct Clients {
    pub(super) client: Client,
    /// The same client without SDK retries, for conditional writes, which
    /// the store retries itself.
    pub(super) conditional_client: Client,
    /// The region requests go to, and where a missing bucket is created.
    pub(super) region: Region,
    /// Where requests go, for error messages: the endpoint URL or the region.
    pub(super) target: String,
}

/// Builds the SDK clients and checks that credentials exist. Fails within
/// about `timeout` when the endpoint or the credential chain does not answer.
pub(super) async fn build(s: ClientOptions, resource: &Resource) -> Result<Clients, StoreError> {
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
        .http_client(crate::https::client())
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

    check_credentials(&shared, resource, s.timeout).await?;

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
    Ok(Clients {
        client: Client::from_conf(conf),
        conditional_client: Client::from_conf(conditional_conf),
        region,
        target,
    })
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
        Ok(Err(e)) => Err(none_found(Some(error_chain(&e)))),
        // Off EC2, the instance metadata address may swallow packets.
        Err(_) => Err(none_found(Some(format!("no answer within {} ms (timeout-ms)", timeout.as_millis())))),
    }
}
