//! The TLS connector a `sslmode` asks for.

use postgres_native_tls::MakeTlsConnector;

use super::settings::TlsMode;
use super::BACKEND;
use crate::store::StoreError;

/// The TLS connector for `mode`, or none when TLS is off.
pub(super) fn tls_connector(mode: TlsMode, root_cert: Option<&[u8]>) -> Result<Option<MakeTlsConnector>, StoreError> {
    let mut builder = native_tls::TlsConnector::builder();
    match mode {
        TlsMode::Disable => return Ok(None),
        // libpq encrypts without checking who answers in these modes; a
        // self-signed server certificate is the common case.
        TlsMode::Prefer | TlsMode::Require => {
            // Loading the system's trusted roots costs tens of milliseconds
            // per store and nothing is checked against them here.
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                .disable_built_in_roots(true);
        }
        TlsMode::VerifyCa => {
            builder.danger_accept_invalid_hostnames(true);
        }
        TlsMode::VerifyFull => {}
    }
    if let Some(pem) = root_cert {
        let certs = native_tls::Certificate::stack_from_pem(pem)
            .map_err(|e| StoreError::config(BACKEND, format!("`sslrootcert` holds no usable PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(StoreError::config(BACKEND, "`sslrootcert` holds no PEM certificate"));
        }
        // As libpq: a given root file is the whole trust, not an addition
        // to the system's roots.
        builder.disable_built_in_roots(true);
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector =
        builder.build().map_err(|e| StoreError::config(BACKEND, format!("cannot set up TLS for `sslmode`: {e}")))?;
    Ok(Some(MakeTlsConnector::new(connector)))
}
