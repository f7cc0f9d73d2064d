//! One connection to the server: a TCP stream, or TLS over one (rustls with
//! the `ring` provider), speaking RESP through the redis crate's command
//! encoder and reply parser.
//!
//! Why not the crate's own `Connection`: its TLS features bring either
//! OpenSSL (native-tls) or `rustls-native-certs`, whose platform certificate
//! store links macOS's Security framework; the library links neither, so it
//! runs on any macOS and cross-builds with a plain linker. Implementing the crate's `ConnectionLike` over our own stream
//! keeps its commands and scripts (`cmd(..).query`, `Script::invoke`) as
//! they are, for plain and TLS connections alike.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use redis::{ConnectionAddr, ConnectionLike, IntoConnectionInfo, Parser, RedisError, RedisResult, Value};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::errors::kind_text;
use super::{tls, BACKEND};
use crate::store::StoreError;

/// Where and how to connect, read from the URL and the TLS settings.
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
    /// TLS when set.
    pub(super) tls: Option<Arc<ClientConfig>>,
}

impl Target {
    /// Where the URL points. `rediss://` is read as `redis://` by the crate
    /// (whose own TLS this build leaves out, see the module doc) and means TLS.
    pub(super) fn from_url(url: &str, endpoint: &str, ca_file: Option<&str>) -> Result<Target, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(bad(format!("the connection URL for {endpoint} must start with redis:// or rediss://"))),
        };
        if rest.contains('#') {
            return Err(bad(format!("the connection URL for {endpoint} has a #fragment, which is not read")));
        }
        if ca_file.is_some() && !tls {
            return Err(bad(format!("`tls-ca-cert-file` is given, but the URL for {endpoint} is not rediss://")));
        }
        // The URL holds the password: its parse error is worded without it.
        let info = format!("redis://{rest}")
            .into_connection_info()
            .map_err(|e| bad(format!("the connection URL for {endpoint} is not usable: {}", kind_text(&e))))?;
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(bad(format!("the connection URL for {endpoint} names no TCP host")));
        };
        let redis = info.redis_settings();
        Ok(Target {
            host,
            port,
            username: redis.username().map(str::to_string),
            password: redis.password().map(str::to_string),
            db: redis.db(),
            tls: if tls { Some(tls::client_config(ca_file)?) } else { None },
        })
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The end of the current call, shared by a connection and its socket.
type Deadline = Arc<Mutex<Instant>>;

/// The time left until `deadline`; a timeout error once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(io::Error::new(io::ErrorKind::TimedOut, "the call's time is up")),
    }
}

/// A socket whose every read and write waits at most until the call's
/// deadline, so a call's many reads and writes (and a reconnect) share one
/// bound instead of each having its own.
struct BoundedTcp {
    tcp: TcpStream,
    deadline: Deadline,
}

impl Read for BoundedTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(time_left(*self.deadline.lock())?))?;
        self.tcp.read(buf)
    }
}

impl Write for BoundedTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(time_left(*self.deadline.lock())?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection. Any failure to write a command or read its reply closes it
/// for good: after a timeout a late reply could still arrive and be taken for
/// the answer to the next command.
pub(super) struct Link {
    stream: Box<dyn Stream>,
    parser: Parser,
    open: bool,
    db: i64,
    deadline: Deadline,
}

impl Link {
    /// Connects, completes the TLS handshake when asked for, authenticates
    /// and selects the database, all before `deadline`.
    pub(super) fn connect(target: &Target, deadline: Instant) -> RedisResult<Link> {
        let tcp = connect_tcp(&target.host, target.port, deadline)?;
        tcp.set_nodelay(true)?;
        let deadline = Arc::new(Mutex::new(deadline));
        let tcp = BoundedTcp { tcp, deadline: deadline.clone() };
        let stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                    RedisError::from(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("`{}` is not a host name TLS can check: {e}", target.host),
                    ))
                })?;
                let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                let mut tls = StreamOwned::new(conn, tcp);
                // Now, so that a refused certificate fails the connect rather
                // than the first command.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).map_err(handshake_failure)?;
                }
                Box::new(tls)
            }
        };
        let mut link = Link { stream, parser: Parser::new(), open: true, db: target.db, deadline };
        if let Some(password) = &target.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &target.username {
                auth.arg(user);
            }
            auth.arg(password).exec(&mut link)?;
        }
        if target.db != 0 {
            redis::cmd("SELECT").arg(target.db).exec(&mut link)?;
        }
        Ok(link)
    }

    /// Bounds every read and write from now on by `deadline`: a call sets
    /// its own before its first command.
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        *self.deadline.lock() = deadline;
    }

    fn send(&mut self, bytes: &[u8]) -> RedisResult<()> {
        if !self.open {
            return Err(closed());
        }
        let sent = self.stream.write_all(bytes).and_then(|_| self.stream.flush());
        sent.map_err(|e| {
            self.open = false;
            RedisError::from(e)
        })
    }

    fn read(&mut self) -> RedisResult<Value> {
        let value = self.parser.parse_value(&mut self.stream);
        if value.is_err() {
            self.open = false;
        }
        value
    }
}

fn closed() -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::NotConnected, "the connection was closed after an error"))
}

/// The first address of `host` that accepts before `deadline`.
fn connect_tcp(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, time_left(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"))))
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        self.read()
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        let mut replies = Vec::with_capacity(count);
        for i in 0..offset + count {
            let reply = self.read()?;
            if i >= offset {
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

/// A failed handshake worded for people when rustls refused it (the rustls
/// error travels inside the I/O error, where no `source()` chain reaches it
/// later).
fn handshake_failure(e: io::Error) -> io::Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => io::Error::new(e.kind(), tls::describe(tls)),
        None => e,
    }
}
