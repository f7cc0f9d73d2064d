//! The TLS client configuration of a `rediss://` store: rustls with the
//! `ring` provider, no system library.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, ClientConfig};

use super::BACKEND;
use crate::store::StoreError;

/// Verifies the server's chain and that its certificate names the host
/// connected to. The roots are the certificates of `ca_file` when given (then
/// the only ones), else Mozilla's list compiled in (`webpki-roots`): no
/// platform store, which would link macOS's Security framework.
pub(super) fn client_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, StoreError> {
    let bad = |detail: String| StoreError::config(BACKEND, detail);
    let roots = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| bad(format!("`tls-ca-cert-file` {path}: {e}")))?;
            crate::tls::roots_from_pem(&pem).map_err(|d| bad(format!("`tls-ca-cert-file` {path} {d}")))?
        }
        None => crate::tls::compiled_in_roots(),
    };
    let provider = crate::tls::provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("cannot set up TLS: {e}")))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("cannot set up TLS: {e}")))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A failed handshake in words.
pub(super) fn describe(e: &rustls::Error) -> String {
    let why = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate does not chain to a trusted root (the `tls-ca-cert-file` when given, \
             else Mozilla's roots)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host connected to".to_string(),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why} ({e})")
}
