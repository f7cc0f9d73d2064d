//! The trust roots and crypto provider of every TLS client in the library
//! (PostgreSQL, Redis, the S3 SDK's HTTPS): rustls with the `ring` provider,
//! so no system OpenSSL, and roots that are either the ones a user's PEM
//! file gives or Mozilla's list compiled in (`webpki-roots`). No platform
//! certificate store is read: on macOS that would link Security.framework.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The crypto provider every TLS client uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mozilla's root certificates, compiled in.
pub fn compiled_in_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

/// The certificates of a PEM file as trust roots. The error completes a
/// sentence that starts with the file's setting and path ("holds no PEM
/// certificate").
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("holds no usable PEM certificate: {e}"))?;
        roots.add(cert).map_err(|e| format!("certificate {} is not usable as a root: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_without_certificates_is_refused_in_words() {
        assert_eq!(roots_from_pem(b"not a certificate\n").unwrap_err(), "holds no PEM certificate");
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(roots_from_pem(broken).unwrap_err().starts_with("holds no usable PEM certificate"));
    }

    #[test]
    fn the_compiled_in_roots_are_mozillas_list() {
        assert_eq!(compiled_in_roots().len(), webpki_roots::TLS_SERVER_ROOTS.len());
        assert!(!compiled_in_roots().is_empty());
    }
}
