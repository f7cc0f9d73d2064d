//! The HTTP client the S3 SDK sends its requests through: hyper over rustls,
//! with the `ring` crypto provider and Mozilla's root certificates compiled in
//! (`webpki-roots`).
//!
//! Why not the SDK's own client: its default uses aws-lc (a C and assembly
//! build per target that wants cmake), and every flavour of it reads the
//! platform's certificate store, which on macOS links Security.framework. With
//! compiled-in roots and no system proxy look-up, the library links nothing
//! but libc (libSystem on macOS), so one build runs on any glibc >= 2.17 and
//! any macOS, and cross-builds with a plain linker.
//!
//! What that means for users: an `https://` endpoint must present a
//! certificate chaining to a root in Mozilla's list (AWS S3 does); a private
//! CA in the system store is not trusted. Proxy environment variables are not
//! read (the SDK's own client does not read them either).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A client for `aws_config::ConfigLoader::http_client`. Connectors are made
/// per distinct timeout settings (the SDK asks once per client) and share
/// their connection pool across requests.
pub fn client() -> SharedHttpClient {
    SharedHttpClient::new(RustlsClient { connectors: Mutex::new(HashMap::new()) })
}

/// The TLS settings for HTTPS: TLS 1.2 and 1.3 with ring's ciphers, Mozilla's
/// roots, no client certificate.
fn tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        // ring supports every default protocol version; this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(crate::tls::compiled_in_roots())
        .with_no_client_auth()
}

#[derive(Debug)]
struct RustlsClient {
    connectors: Mutex<HashMap<(Option<Duration>, Option<Duration>), SharedHttpConnector>>,
}

impl HttpClient for RustlsClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        connectors.entry(key).or_insert_with(|| SharedHttpConnector::new(Connector::new(key.0, key.1))).clone()
    }
}

struct Connector {
    client: HyperClient<HttpsConnector<TcpConnector>, SdkBody>,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("read_timeout", &self.read_timeout).finish_non_exhaustive()
    }
}

impl Connector {
    fn new(connect_timeout: Option<Duration>, read_timeout: Option<Duration>) -> Connector {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false); // the TLS layer above handles https:// URIs
        tcp.set_nodelay(true); // requests go out in several small writes
        tcp.set_connect_timeout(connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Connector { client, read_timeout }
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let answered = match read_timeout {
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        return Err(ConnectorError::timeout(
                            format!("no response within the read timeout of {} ms", limit.as_millis()).into(),
                        ))
                    }
                },
                None => response.await,
            };
            match answered {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(classify(e.into())),
            }
        })
    }
}

/// Sorts a failure into the kinds the SDK's retry logic and our error
/// messages tell apart: timeout, I/O (never reached, or lost, the server),
/// misuse, other.
fn classify(err: BoxError) -> ConnectorError {
    if let Some(io) = find::<std::io::Error>(err.as_ref()) {
        if io.kind() == std::io::ErrorKind::TimedOut {
            return ConnectorError::timeout(err);
        }
    }
    if let Some(h) = find::<hyper::Error>(err.as_ref()) {
        if h.is_timeout() {
            return ConnectorError::timeout(err);
        }
        if h.is_user() {
            return ConnectorError::user(err);
        }
        if h.is_closed() || h.is_canceled() || find::<std::io::Error>(h).is_some() {
            return ConnectorError::io(err);
        }
        // The server closed the connection mid-answer: worth another try.
        if h.is_incomplete_message() {
            return ConnectorError::other(err, Some(ErrorKind::TransientError));
        }
    }
    let connect_failed = find::<hyper_util::client::legacy::Error>(err.as_ref()).is_some_and(|e| e.is_connect());
    if connect_failed || find::<std::io::Error>(err.as_ref()).is_some() {
        return ConnectorError::io(err);
    }
    ConnectorError::other(err, None)
}

/// The first error of type `E` in `err`'s chain of causes.
fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::net::TcpListener;

    fn send(url: &str, connect_timeout: Option<Duration>) -> Result<HttpResponse, ConnectorError> {
        let connector = Connector::new(connect_timeout, None);
        let request = HttpRequest::try_from(http::Request::builder().uri(url).body(SdkBody::empty()).unwrap()).unwrap();
        crate::runtime::block_on(connector.call(request)).unwrap()
    }

    #[test]
    fn plain_http_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let response = send(&format!("http://{addr}/x"), None).unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body = crate::runtime::block_on(aws_smithy_types::byte_stream::ByteStream::new(response.into_body()).collect())
            .unwrap()
            .unwrap();
        assert_eq!(body.into_bytes().as_ref(), b"ok");
        assert!(server.join().unwrap().starts_with("GET /x HTTP/1.1"));
    }

    #[test]
    fn refused_connection_is_an_io_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = send(&format!("http://127.0.0.1:{port}/"), None).unwrap_err();
        assert!(err.is_io(), "{err:?}");
        let refused = find::<std::io::Error>(&err).is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        assert!(refused, "{err:?}");
    }

    #[test]
    fn https_checks_the_certificate_against_the_compiled_in_roots() {
        // A TLS server whose certificate no public root signed: the handshake
        // must fail on the certificate (nothing is sent in clear).
        let (url, server) = tls_server_with_unknown_cert();
        let err = send(&url, Some(Duration::from_secs(5))).unwrap_err();
        let text = format!("{:?}", err);
        assert!(err.is_io() && text.contains("UnknownIssuer"), "{text}");
        server.join().unwrap();
    }

    /// Serves one TLS handshake with a self-signed certificate that no root
    /// trusts (rust/testdata/localhost.crt).
    fn tls_server_with_unknown_cert() -> (String, std::thread::JoinHandle<()>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(include_bytes!("testdata/localhost.crt")).unwrap()],
                PrivateKeyDer::from_pem_slice(include_bytes!("testdata/localhost.key")).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            // The client aborts the handshake; an error here is expected.
            let _ = conn.complete_io(&mut tcp);
        });
        (format!("https://localhost:{port}/"), server)
    }
}
