//! The TLS connector a `sslmode` asks for: rustls with the `ring` crypto
//! provider, so no system OpenSSL (or any other system library) is needed.

use std::error::Error as _;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::BACKEND;
use crate::store::StoreError;

/// How the connection uses TLS, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TlsMode {
    Disable,
    /// Try TLS, fall back to plain; the certificate is not checked (libpq
    /// `allow` and `prefer`).
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS, certificate chain checked against the trusted roots.
    VerifyCa,
    /// As VerifyCa, and the certificate must name the host.
    VerifyFull,
}

impl TlsMode {
    /// The mode an `sslmode` names; `root_given`: an `sslrootcert` file is
    /// set, which makes `require` check the chain, as libpq does.
    pub(super) fn from_sslmode(sslmode: &str, root_given: bool) -> Result<TlsMode, String> {
        Ok(match sslmode {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" if root_given => TlsMode::VerifyCa,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(format!(
                    "`sslmode` must be one of disable, allow, prefer, require, verify-ca, verify-full; got `{other}`"
                ))
            }
        })
    }
}

/// What `tokio_postgres::Config::connect` takes for TLS.
pub(super) type MakeTlsConnector = tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector for `mode`, or none when TLS is off. rustls with the
/// `ring` provider: no system OpenSSL.
///
/// Trust, as libpq: `prefer` and `require` encrypt without checking the
/// certificate; `verify-ca` checks the chain, `verify-full` the chain and the
/// host name. The roots are the `sslrootcert` file when given (then the only
/// ones), else Mozilla's list compiled in (`webpki-roots`; libpq would read
/// ~/.postgresql/root.crt, or the system store with `sslrootcert=system`).
pub(super) fn tls_connector(mode: TlsMode, root_cert: Option<&[u8]>) -> Result<Option<MakeTlsConnector>, StoreError> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::config(BACKEND, format!("cannot set up TLS for `sslmode`: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => Arc::new(LenientVerifier { provider, chain: None }),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = match root_cert {
                Some(pem) => crate::tls::roots_from_pem(pem)
                    .map_err(|what| StoreError::config(BACKEND, format!("`sslrootcert` {what}")))?,
                None => crate::tls::compiled_in_roots(),
            };
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| StoreError::config(BACKEND, format!("cannot set up TLS for `sslmode`: {e}")))?;
            if mode == TlsMode::VerifyCa {
                Arc::new(LenientVerifier { provider, chain: Some(chain) })
            } else {
                chain
            }
        }
    };
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(Some(MakeTlsConnector::new(config)))
}

/// What a failed TLS handshake means, in words: the rustls error travels
/// inside an `io::Error` (whose `source()` skips it), so look there.
pub(super) fn tls_failure(e: &postgres::Error) -> Option<String> {
    let io = e.source()?.downcast_ref::<io::Error>()?;
    let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    let why = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate does not chain to a trusted root (the `sslrootcert` file, or Mozilla's \
             roots when none is given)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for the host name connected to (sslmode=verify-full \
              checks it; verify-ca does not)"
            .to_string(),
        other => other.to_string(),
    };
    Some(format!("TLS handshake failed: {why} ({tls})"))
}

/// The certificate check of `sslmode=prefer/require` and of `verify-ca`
/// (`verify-full` is the web PKI verifier as it is). `prefer`/`require`
/// accept any certificate, as libpq checks none in these modes; `verify-ca`
/// wants a chain to a trusted root but not the host name: the web PKI
/// verifier checks the name only after the chain, so a name mismatch from it
/// means the chain was good. Either way the handshake signatures are
/// verified with the key the certificate holds.
#[derive(Debug)]
struct LenientVerifier {
    provider: Arc<CryptoProvider>,
    /// `None`: any certificate; `Some`: the chain must verify (verify-ca).
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
