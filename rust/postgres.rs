//! The PostgreSQL backend: one value in one row of one table.
//!
//! The table has exactly the shape the original library created,
//! `(id integer, value text|bytea)` with no key, so tables it wrote keep
//! working in both directions. A row is found by `id`; several stores may
//! share a table with different row ids.
//!
//! The version token is the row's `xmin` system column: the id of the
//! transaction that wrote the current row version. Every committed UPDATE
//! makes a new row version with a new `xmin`, it needs no extra column, and
//! rows written by the original library have one too.
//!
//! The connection is kept open between calls (the original opened one per
//! commit) with its statements prepared once. When it breaks, the call that
//! notices reconnects and runs again, provided running again cannot apply a
//! write twice or report a false conflict (see [`PostgresStore::run`]).
//!
//! Safe SQL: values travel only as bind parameters; the table name appears
//! in SQL only as quoted identifiers built by [`quote_table`].
//!
//! Configuration keys (made by `clojure/duratom/backend/postgres.clj`):
//! `host` (default localhost; a path means a Unix socket directory), `port`
//! (5432), `dbname` (default: the user name), `user`, `password`, `sslmode`
//! (disable, allow/prefer (default), require, verify-ca, verify-full, as
//! libpq), `sslrootcert` (PEM file; the only trusted roots when given),
//! `table` (`name` or `schema.name`), `row-id` (0), `column-type` (text or
//! bytea, used when creating the table), `connect-timeout-ms` (5000),
//! `tcp-user-timeout-ms` (30000, 0 = off), `application-name` (duratom).

use std::error::Error as _;
use std::io;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::error::DbError;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};
use postgres_native_tls::MakeTlsConnector;

use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

const BACKEND: &str = "postgres-db";

/// Opens the row the config names, connecting and creating the table if it is
/// missing, so that a wrong host, password or database fails here, at
/// construction, rather than at the first commit.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    let mut store = PostgresStore::new(config)?;
    store.conn = Some(store.connect("open")?);
    Ok(Box::new(store))
}

/// How the connection uses TLS, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
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

/// What the table's `value` column holds, as found on the server (which may
/// differ from `column-type` for a table that already existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    Text,
    Bytea,
}

/// A connection with the statements prepared on it.
struct Conn {
    client: Client,
    value: ValueKind,
    load: Statement,
    update_any: Statement,
    update_if: Statement,
    insert: Statement,
    occupied: Statement,
    lock: Statement,
    delete: Statement,
    /// The quoted table name, bound as text for the lock statement.
    table: String,
}

pub struct PostgresStore {
    resource: Resource,
    pg: postgres::Config,
    tls: Option<MakeTlsConnector>,
    /// `host:port`, for connection error messages.
    endpoint: String,
    connect_timeout: Duration,
    /// The table as quoted SQL identifiers, e.g. `"public"."my_table"`.
    table_sql: String,
    /// The `value` column type used when the table is created.
    create_type: &'static str,
    row_id: i64,
    conn: Option<Conn>,
}

/// Why one attempt of an operation failed.
enum Failure {
    /// A conditional commit found another version.
    Conflict,
    /// The server or the connection failed. `ambiguous`: the failure came
    /// while a write was being committed, so it may have taken effect.
    Pg { error: postgres::Error, ambiguous: bool },
    /// The value cannot be stored in this table (e.g. binary in a text column).
    Invalid(String),
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Self {
        Failure::Pg { error, ambiguous: false }
    }
}

/// A bound value, as the table's column type wants it.
enum Param<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl Param<'_> {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(s) => s,
            Param::Bytes(b) => b,
        }
    }
}

impl PostgresStore {
    /// Reads and checks the config; does not connect.
    fn new(config: &Config) -> Result<PostgresStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);

        let host = config.get("host").unwrap_or("localhost");
        if host.is_empty() {
            return Err(bad("`host` is empty".into()));
        }
        let port = match config.number("port")? {
            None => 5432,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => return Err(bad(format!("`port` must be between 1 and 65535, got {p}"))),
        };
        let user = config.required("user")?;
        if user.is_empty() {
            return Err(bad("`user` is empty".into()));
        }
        // libpq's default: the database named like the user.
        let dbname = config.get("dbname").unwrap_or(user);
        let table = config.required("table")?;
        let table_sql = quote_table(table).map_err(|d| bad(format!("`table` {d}")))?;
        let row_id = config.number("row-id")?.unwrap_or(0);
        let create_type = match config.get("column-type").unwrap_or("text") {
            "text" => "text",
            "bytea" => "bytea",
            other => return Err(bad(format!("`column-type` must be text or bytea, got `{other}`"))),
        };
        let connect_timeout = match config.number("connect-timeout-ms")? {
            None => Duration::from_millis(5000),
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
            Some(ms) => return Err(bad(format!("`connect-timeout-ms` must be positive, got {ms}"))),
        };
        // Bounds how long a write to a vanished server (network partition)
        // can hang before the connection is declared dead; 0 turns it off.
        let tcp_user_timeout = match config.number("tcp-user-timeout-ms")? {
            None => Some(Duration::from_millis(30_000)),
            Some(0) => None,
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            Some(ms) => return Err(bad(format!("`tcp-user-timeout-ms` must not be negative, got {ms}"))),
        };
        let root_cert = match config.get("sslrootcert") {
            None | Some("") => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| bad(format!("`sslrootcert` {path}: {e}")))?),
        };
        let mode = match config.get("sslmode").unwrap_or("prefer") {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            // As libpq: `require` with a root certificate given verifies the chain.
            "require" if root_cert.is_some() => TlsMode::VerifyCa,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(bad(format!(
                    "`sslmode` must be one of disable, allow, prefer, require, verify-ca, verify-full; got `{other}`"
                )))
            }
        };
        let tls = tls_connector(mode, root_cert.as_deref())?;

        let mut pg = postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name(config.get("application-name").unwrap_or("duratom"))
            .connect_timeout(connect_timeout)
            .ssl_mode(match mode {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            });
        if let Some(t) = tcp_user_timeout {
            pg.tcp_user_timeout(t);
        }
        if let Some(password) = config.get("password") {
            pg.password(password);
        }

        let endpoint = format!("{host}:{port}");
        let resource =
            Resource { backend: BACKEND, name: format!("table \"{table}\" row {row_id} ({endpoint}/{dbname})") };
        Ok(PostgresStore { resource, pg, tls, endpoint, connect_timeout, table_sql, create_type, row_id, conn: None })
    }

    /// A new connection, with the table created if missing and the
    /// statements prepared.
    fn connect(&self, op: &str) -> Result<Conn, StoreError> {
        let connected = match &self.tls {
            Some(tls) => self.pg.connect(tls.clone()),
            None => self.pg.connect(NoTls),
        };
        let mut client = connected.map_err(|e| {
            StoreError::backend(
                &self.resource,
                op,
                format!("cannot connect to {}: {}", self.endpoint, self.connect_reason(&e)),
            )
        })?;
        let r = &self.resource;
        let t = &self.table_sql;

        // Look before creating: CREATE TABLE IF NOT EXISTS needs the CREATE
        // privilege on the schema even when the table exists, and a role that
        // may only read and write an existing table must still work.
        let exists: bool = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[t])
            .and_then(|row| row.try_get(0))
            .map_err(|e| StoreError::backend(r, "looking up the table", describe(&e)))?;
        if !exists {
            let create = format!("CREATE TABLE IF NOT EXISTS {t} (id integer, value {})", self.create_type);
            match client.batch_execute(&create) {
                Ok(()) => {}
                // Another process created it at the same moment: the catalog's
                // unique index, not IF NOT EXISTS, caught the race. It exists.
                Err(e) if matches!(sqlstate(&e), Some("23505" | "42P07")) => {}
                Err(e) => return Err(StoreError::backend(r, "creating the table", describe(&e))),
            }
        }

        // `$n::bigint` lets one i64 parameter match id columns of any integer
        // width (the original made `integer`); the cross-type comparison still
        // uses an index on id.
        let mut prepare = |sql: String| {
            client.prepare(&sql).map_err(|e| StoreError::backend(r, "preparing statements", describe(&e)))
        };
        let load = prepare(format!("SELECT value, xmin::text FROM {t} WHERE id = $1::bigint LIMIT 1"))?;
        let update_any = prepare(format!("UPDATE {t} SET value = $1 WHERE id = $2::bigint RETURNING xmin::text"))?;
        let update_if = prepare(format!(
            "UPDATE {t} SET value = $1 WHERE id = $2::bigint AND xmin::text = $3 RETURNING xmin::text"
        ))?;
        let insert = prepare(format!("INSERT INTO {t} (id, value) VALUES ($1::bigint, $2) RETURNING xmin::text"))?;
        let occupied = prepare(format!("SELECT 1 FROM {t} WHERE id = $1::bigint AND value IS NOT NULL LIMIT 1"))?;
        let delete = prepare(format!("DELETE FROM {t} WHERE id = $1::bigint"))?;
        // Serialises inserts of one row across every client: the original's
        // tables have no unique key on id, so nothing else stops two writers
        // from both inserting. Keyed on the table's oid, so "t" and
        // "public.t" take the same lock.
        let lock = prepare(
            "SELECT pg_advisory_xact_lock(hashtextextended('duratom ' || $1::text::regclass::oid::text || ' ' || $2::bigint::text, 0))"
                .to_string(),
        )?;

        let value = match load.columns()[0].type_() {
            &Type::BYTEA => ValueKind::Bytea,
            ty if <String as postgres::types::FromSql>::accepts(ty) => ValueKind::Text,
            ty => {
                return Err(StoreError::backend(
                    r,
                    "checking the table",
                    format!("its `value` column has type {ty}; duratom stores text or bytea"),
                ))
            }
        };
        Ok(Conn { client, value, load, update_any, update_if, insert, occupied, lock, delete, table: t.clone() })
    }

    /// Runs one operation on the kept connection, connecting first if there
    /// is none.
    ///
    /// If a kept connection turns out to be dead (the server restarted, an
    /// administrator ended it, the network dropped it while idle), the
    /// operation runs once more on a fresh connection, unless the failure hit
    /// a write while it was being committed (`ambiguous`) and running it
    /// again is not harmless (`rerun_harmless`): a conditional write that did
    /// land would then report a false conflict. A fresh connection that fails
    /// is not retried, so a down server costs one connect attempt per call.
    fn run<T>(
        &mut self,
        op: &str,
        rerun_harmless: bool,
        mut attempt: impl FnMut(&mut Conn, i64) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut may_retry = true;
        loop {
            if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                self.conn = None;
            }
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => {
                    may_retry = false;
                    self.conn.insert(self.connect(op)?)
                }
            };
            match attempt(conn, self.row_id) {
                Ok(v) => return Ok(v),
                Err(Failure::Conflict) => return Err(StoreError::Conflict { resource: self.resource.clone() }),
                Err(Failure::Invalid(detail)) => return Err(StoreError::backend(&self.resource, op, detail)),
                Err(Failure::Pg { error, ambiguous }) => {
                    let lost = connection_lost(&error) || conn.client.is_closed();
                    if lost || stale_statements(&error) {
                        self.conn = None; // the next call reconnects and prepares again
                    }
                    if lost && may_retry && (!ambiguous || rerun_harmless) {
                        may_retry = false;
                        continue;
                    }
                    let detail = if lost {
                        let mut d = format!("lost the connection to {}: {}", self.endpoint, describe(&error));
                        if ambiguous {
                            d.push_str(" (while committing: the write may or may not have taken effect)");
                        }
                        d
                    } else {
                        describe(&error)
                    };
                    return Err(StoreError::backend(&self.resource, op, detail));
                }
            }
        }
    }

    /// A connect error in plain words: refused, timed out, or what the server said.
    fn connect_reason(&self, e: &postgres::Error) -> String {
        if let Some(io) = e.source().and_then(|s| s.downcast_ref::<io::Error>()) {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running and listening there?)".into()
                }
                io::ErrorKind::TimedOut => {
                    format!("no answer within {} ms (connect-timeout-ms)", self.connect_timeout.as_millis())
                }
                _ => io.to_string(),
            };
        }
        let text = describe(e);
        if text.ends_with("password missing") {
            return "the server asks for a password and none was given".into();
        }
        text
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.run("load", true, |c, id| {
            let rows = c.client.query(&c.load, &[&id])?;
            let Some(row) = rows.first() else { return Ok(None) };
            let bytes = match c.value {
                ValueKind::Text => row.try_get::<_, Option<String>>(0)?.map(String::into_bytes),
                ValueKind::Bytea => row.try_get::<_, Option<Vec<u8>>>(0)?,
            };
            let version: String = row.try_get(1)?;
            // A NULL value counts as nothing stored, as an absent row does.
            Ok(bytes.map(|bytes| Stored { bytes, version: Version(version) }))
        })
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        // Writing the same bytes twice is harmless for an unconditional write;
        // for a conditional one a second run could see its own first write.
        let rerun_harmless = *expect == Expect::Anything;
        self.run("commit", rerun_harmless, |c, id| {
            let value = param(c.value, bytes)?;
            let value = value.sql();
            match expect {
                Expect::Anything => {
                    // The usual case, one round trip: the row is there.
                    let updated = c.client.query(&c.update_any, &[value, &id]).map_err(ambiguous)?;
                    if let Some(v) = first_xmin(&updated)? {
                        return Ok(Version(v));
                    }
                    // No row yet: insert under the row's lock, after looking
                    // again in case another writer inserted while we waited.
                    let mut tx = c.client.transaction()?;
                    tx.execute(&c.lock, &[&c.table, &id])?;
                    let v = match first_xmin(&tx.query(&c.update_any, &[value, &id])?)? {
                        Some(v) => v,
                        None => tx.query_one(&c.insert, &[&id, value])?.try_get(0)?,
                    };
                    tx.commit().map_err(ambiguous)?;
                    Ok(Version(v))
                }
                Expect::Version(expected) => {
                    // In a transaction although one statement would do: a dead
                    // kept connection then fails at BEGIN, where nothing was
                    // sent, and `run` may safely retry on a fresh one.
                    let mut tx = c.client.transaction()?;
                    let updated = tx.query(&c.update_if, &[value, &id, &expected.0])?;
                    let Some(v) = first_xmin(&updated)? else {
                        tx.rollback()?;
                        return Err(Failure::Conflict);
                    };
                    tx.commit().map_err(ambiguous)?;
                    Ok(Version(v))
                }
                Expect::Nothing => {
                    let mut tx = c.client.transaction()?;
                    tx.execute(&c.lock, &[&c.table, &id])?;
                    if !tx.query(&c.occupied, &[&id])?.is_empty() {
                        tx.rollback()?;
                        return Err(Failure::Conflict);
                    }
                    // A row whose value is NULL counts as empty: fill it in.
                    let v = match first_xmin(&tx.query(&c.update_any, &[value, &id])?)? {
                        Some(v) => v,
                        None => tx.query_one(&c.insert, &[&id, value])?.try_get(0)?,
                    };
                    tx.commit().map_err(ambiguous)?;
                    Ok(Version(v))
                }
            }
        })
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        // Deleting twice is the same as deleting once, so a rerun is harmless.
        self.run("delete", true, |c, id| {
            c.client.execute(&c.delete, &[&id])?;
            Ok(())
        })
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// A failure while committing: the write may have landed.
fn ambiguous(error: postgres::Error) -> Failure {
    Failure::Pg { error, ambiguous: true }
}

/// The new `xmin` an `UPDATE ... RETURNING xmin::text` reports, if it hit a row.
fn first_xmin(rows: &[postgres::Row]) -> Result<Option<String>, Failure> {
    match rows.first() {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => Ok(None),
    }
}

/// `bytes` as the column wants them. A text column takes only UTF-8 without
/// NUL (PostgreSQL text cannot hold NUL); say so rather than let the server
/// answer with an encoding error.
fn param(kind: ValueKind, bytes: &[u8]) -> Result<Param<'_>, Failure> {
    match kind {
        ValueKind::Bytea => Ok(Param::Bytes(bytes)),
        ValueKind::Text => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                Failure::Invalid(format!(
                    "the value is not UTF-8 text ({e}) but the table's `value` column is text; \
                     binary values need :column-type :bytea"
                ))
            })?;
            if text.contains('\0') {
                return Err(Failure::Invalid(
                    "the value contains a NUL character, which a text column cannot hold; use :column-type :bytea"
                        .into(),
                ));
            }
            Ok(Param::Text(text))
        }
    }
}

/// The TLS connector for `mode`, or none when TLS is off.
fn tls_connector(mode: TlsMode, root_cert: Option<&[u8]>) -> Result<Option<MakeTlsConnector>, StoreError> {
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

/// The SQLSTATE code of a server error, if it is one.
fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Whether the error means the connection is unusable: closed, an I/O
/// failure, a connection-class SQLSTATE (08xxx), or the server shutting the
/// session down (57P01 admin shutdown, 57P02 crash, 57P03 not accepting yet).
fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = sqlstate(e) {
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether the prepared statements no longer fit the table (dropped,
/// recreated with other columns): a new connection prepares them again, and
/// creates the table if it is gone.
fn stale_statements(e: &postgres::Error) -> bool {
    matches!(sqlstate(e), Some("42P01" | "42703" | "0A000"))
}

/// An error as a person needs to read it: for a server error its own message
/// (the client's Display says only "db error"), else the whole cause chain.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db(db);
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some causes repeat their own cause in their Display; say it once.
        let part = s.to_string();
        if !text.contains(part.trim_end_matches(':')) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn describe_db(db: &DbError) -> String {
    let mut text = db.message().to_string();
    if let Some(detail) = db.detail() {
        text.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!(" (hint: {hint})"));
    }
    text.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
    text
}

/// The table name as SQL: each part double-quoted, embedded quotes doubled,
/// so whatever the name holds it is an identifier and never SQL.
///
/// For compatibility with the original library, which pasted the name into
/// its SQL unquoted, names are read the way PostgreSQL would have read them
/// there: `schema.table` is schema-qualified, an unquoted plain identifier
/// folds to lower case (`MyTable` is the table `mytable` it created), and a
/// part already written in double quotes (`"MyTable"`) is taken as quoted.
/// Anything else (`t; DROP TABLE x`, `it's`) becomes one literal identifier.
fn quote_table(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name.contains('\0') {
        return Err("contains a NUL character".into());
    }
    let parts: Vec<String> = if name.contains('"') {
        match parse_quoted_name(name) {
            Some(parts) => parts,
            // Not valid quoted-name syntax: the whole text is the name.
            None => vec![name.to_string()],
        }
    } else {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(format!("`{name}` has more than one '.'; write `table` or `schema.table`"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{name}` has an empty schema or table part"));
        }
        parts.into_iter().map(fold_plain).collect()
    };
    Ok(parts.iter().map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join("."))
}

/// A plain identifier (letters, digits, `_`, `$`, not starting with a digit
/// or `$`) as PostgreSQL folds it when unquoted: ASCII lower case. Any other
/// text is kept exactly.
fn fold_plain(part: &str) -> String {
    if is_plain(part) {
        part.to_ascii_lowercase()
    } else {
        part.to_string()
    }
}

/// Parses `part` or `part.part`, where each part is either `"quoted"` (with
/// `""` for a quote) or a plain identifier. `None` when the text is not
/// exactly that.
fn parse_quoted_name(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = name;
    loop {
        let (part, after) = if let Some(body) = rest.strip_prefix('"') {
            let mut part = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if body[i + 1..].starts_with('"') => {
                        part.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => part.push(c),
                }
            };
            if part.is_empty() {
                return None;
            }
            (part, &body[end..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let raw = &rest[..end];
            if !is_plain(raw) {
                return None;
            }
            (fold_plain(raw), &rest[end..])
        };
        parts.push(part);
        if after.is_empty() {
            break;
        }
        rest = after.strip_prefix('.')?;
        if parts.len() == 2 {
            return None;
        }
    }
    Some(parts)
}

fn is_plain(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    //! These run against a real server: `scripts/postgres-server start DIR`
    //! starts one and writes DIR/env with its coordinates.

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    struct Server {
        host: String,
        port: String,
        user: String,
        password: String,
        db: String,
        root_cert: String,
    }

    fn server() -> Server {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set. The PostgreSQL tests need a real server: run \
                     `scripts/postgres-server start /tmp/pgtest && . /tmp/pgtest/env` and test again"
                )
            })
        };
        Server {
            host: var("DURATOM_TEST_PG_HOST"),
            port: var("DURATOM_TEST_PG_PORT"),
            user: var("DURATOM_TEST_PG_USER"),
            password: var("DURATOM_TEST_PG_PASSWORD"),
            db: var("DURATOM_TEST_PG_DB"),
            root_cert: var("DURATOM_TEST_PG_SSLROOTCERT"),
        }
    }

    /// A name no other test or earlier run uses.
    fn unique(label: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!("{label}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The server's settings for `table`, with `extra` added or replacing.
    fn config(table: &str, extra: &[(&str, &str)]) -> Config {
        let s = server();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("host", &s.host),
            ("port", &s.port),
            ("user", &s.user),
            ("password", &s.password),
            ("dbname", &s.db),
            ("table", table),
        ];
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k, v));
        }
        Config::from_pairs("postgres-db", &pairs)
    }

    fn open_ok(table: &str, extra: &[(&str, &str)]) -> Box<dyn Store> {
        open(&config(table, extra)).unwrap_or_else(|e| panic!("opening {table}: {e}"))
    }

    fn open_err(table: &str, extra: &[(&str, &str)]) -> StoreError {
        match open(&config(table, extra)) {
            Ok(_) => panic!("opening {table} with {extra:?} should fail"),
            Err(e) => e,
        }
    }

    /// A separate connection to look at and tamper with the server.
    fn admin() -> Client {
        let s = server();
        let mut c = postgres::Config::new();
        c.host(&s.host).port(s.port.parse().unwrap()).user(&s.user).password(&s.password).dbname(&s.db);
        c.connect(NoTls).expect("admin connection")
    }

    fn ident(name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    fn rows_with_id(admin: &mut Client, table_sql: &str, id: i32) -> i64 {
        admin.query_one(&format!("SELECT count(*) FROM {table_sql} WHERE id = $1"), &[&id]).unwrap().get(0)
    }

    fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Conflict { .. }))
    }

    #[test]
    fn text_and_bytea_values_round_trip_through_a_reopen() {
        let mut admin = admin();
        let text_table = unique("rt_text");
        let mut s = open_ok(&text_table, &[]);
        assert!(s.load().unwrap().is_none(), "a new row holds nothing");
        let value = "{:x \"\u{1F600}\" :y [1 2 #{:a}]}".as_bytes();
        let v1 = s.commit(value, &Expect::Anything).unwrap();
        let got = open_ok(&text_table, &[]).load().unwrap().unwrap();
        assert_eq!(got.bytes, value);
        assert_eq!(got.version, v1, "load reports the version commit returned");
        let v2 = s.commit(b"{:x 2}", &Expect::Anything).unwrap();
        assert_ne!(v1, v2, "every commit makes a new version");
        assert_eq!(rows_with_id(&mut admin, &ident(&text_table), 0), 1, "updates, never a second row");

        // Another row of the same table is independent.
        let mut other = open_ok(&text_table, &[("row-id", "1")]);
        assert!(other.load().unwrap().is_none());
        other.commit(b"{:other true}", &Expect::Anything).unwrap();
        assert_eq!(s.load().unwrap().unwrap().bytes, b"{:x 2}");

        let ty: String = admin
            .query_one(
                "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = 'value'",
                &[&text_table],
            )
            .unwrap()
            .get(0);
        assert_eq!(ty, "text");

        // A text column cannot take binary; the error says what to do.
        let e = s.commit(&[0xff, 0xfe, 0x00], &Expect::Anything).unwrap_err();
        assert!(e.to_string().contains("not UTF-8") && e.to_string().contains(":column-type :bytea"), "{e}");
        let e = s.commit(b"a\0b", &Expect::Anything).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert_eq!(s.load().unwrap().unwrap().bytes, b"{:x 2}", "a refused value leaves the row as it was");

        // 20 MB of text.
        let big: Vec<u8> = b"{:k \"0123456789\"} ".repeat(20 * 1024 * 1024 / 18 + 1);
        s.commit(&big, &Expect::Anything).unwrap();
        assert_eq!(open_ok(&text_table, &[]).load().unwrap().unwrap().bytes, big);

        let bytea_table = unique("rt_bytea");
        let mut b = open_ok(&bytea_table, &[("column-type", "bytea"), ("row-id", "7")]);
        let all_bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let v = b.commit(&all_bytes, &Expect::Anything).unwrap();
        let got = open_ok(&bytea_table, &[("column-type", "bytea"), ("row-id", "7")]).load().unwrap().unwrap();
        assert_eq!((got.bytes, got.version), (all_bytes, v));
        let ty: String = admin
            .query_one(
                "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = 'value'",
                &[&bytea_table],
            )
            .unwrap()
            .get(0);
        assert_eq!(ty, "bytea");

        // The table exists; a store configured for bytea uses it as the text table it is.
        let mut again = open_ok(&text_table, &[("column-type", "bytea")]);
        assert_eq!(again.load().unwrap().unwrap().bytes, big);

        admin.batch_execute(&format!("DROP TABLE {}; DROP TABLE {}", ident(&text_table), ident(&bytea_table))).unwrap();
    }

    #[test]
    fn tables_written_by_the_original_library_work_as_they_are() {
        let mut admin = admin();
        // The original pasted the name unquoted, so PostgreSQL folded it.
        let given = unique("Orig_Table");
        let folded = given.to_ascii_lowercase();
        admin
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {given} (id integer, value text);
                 INSERT INTO {given} (id, value) VALUES (0, '{{:a #sorted/map {{:b 1}}}}');
                 INSERT INTO {given} (id, value) VALUES (3, '[:other :row]');"
            ))
            .unwrap();
        let mut s = open_ok(&given, &[]);
        let got = s.load().unwrap().expect("the original's row loads");
        assert_eq!(got.bytes, b"{:a #sorted/map {:b 1}}");
        assert!(!got.version.0.is_empty());

        s.commit(b"{:a 2}", &Expect::Anything).unwrap();
        let value: String = admin.query_one(&format!("SELECT value FROM {folded} WHERE id = 0"), &[]).unwrap().get(0);
        assert_eq!(value, "{:a 2}", "written in place, readable as plain text");
        assert_eq!(rows_with_id(&mut admin, &folded, 0), 1);

        s.delete().unwrap();
        s.delete().unwrap(); // deleting what is not there is fine
        assert_eq!(rows_with_id(&mut admin, &folded, 0), 0, "destroy deletes the row");
        assert_eq!(rows_with_id(&mut admin, &folded, 3), 1, "and only that row");
        assert!(s.load().unwrap().is_none());
        s.commit(b"{:back 1}", &Expect::Anything).unwrap();
        assert_eq!(rows_with_id(&mut admin, &folded, 0), 1);

        // A NULL value counts as nothing stored.
        admin.batch_execute(&format!("INSERT INTO {folded} (id, value) VALUES (9, NULL)")).unwrap();
        let mut n = open_ok(&given, &[("row-id", "9")]);
        assert!(n.load().unwrap().is_none());
        n.commit(b"9", &Expect::Nothing).unwrap();
        assert_eq!(rows_with_id(&mut admin, &folded, 9), 1, "the NULL row was filled in");

        admin.batch_execute(&format!("DROP TABLE {folded}")).unwrap();
    }

    #[test]
    fn conditional_commits_refuse_stale_versions() {
        let mut admin = admin();
        let table = unique("cond");
        let mut a = open_ok(&table, &[]);
        let mut b = open_ok(&table, &[]);
        let v1 = a.commit(b"1", &Expect::Nothing).unwrap();
        assert!(conflict(b.commit(b"2", &Expect::Nothing)), "the row exists");
        assert_eq!(b.load().unwrap().unwrap().version, v1);
        let v2 = b.commit(b"2", &Expect::Version(v1.clone())).unwrap();
        assert!(conflict(a.commit(b"3", &Expect::Version(v1))), "b wrote since a read");
        assert_eq!(a.load().unwrap().unwrap().bytes, b"2");

        // A writer outside duratom (the original library, psql) changes the version too.
        admin.execute(&format!("UPDATE {} SET value = 'outside' WHERE id = 0", ident(&table)), &[]).unwrap();
        assert!(conflict(a.commit(b"4", &Expect::Version(v2))));
        let v3 = a.load().unwrap().unwrap().version;
        a.commit(b"4", &Expect::Version(v3.clone())).unwrap();
        assert_eq!(b.load().unwrap().unwrap().bytes, b"4");

        a.delete().unwrap();
        assert!(conflict(b.commit(b"5", &Expect::Version(v3))), "a deleted row has no version");
        b.commit(b"5", &Expect::Nothing).unwrap();
        assert_eq!(rows_with_id(&mut admin, &ident(&table), 0), 1);
        admin.batch_execute(&format!("DROP TABLE {}", ident(&table))).unwrap();
    }

    #[test]
    fn concurrent_first_writes_make_exactly_one_row() {
        let mut admin = admin();
        let table = unique("race");
        open_ok(&table, &[]); // creates the table, so the threads race on the row only
        for (row, expect) in [("1", Expect::Nothing), ("2", Expect::Anything)] {
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let mut s = open_ok(&table, &[("row-id", row)]);
                    let (barrier, expect) = (barrier.clone(), expect.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        s.commit(format!("{i}").as_bytes(), &expect)
                    })
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let won = results.iter().filter(|r| r.is_ok()).count();
            if expect == Expect::Nothing {
                assert_eq!(won, 1, "exactly one create wins: {results:?}");
                assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict { .. }))));
            } else {
                assert_eq!(won, 8, "{results:?}");
            }
            assert_eq!(rows_with_id(&mut admin, &ident(&table), row.parse().unwrap()), 1, "no duplicate rows");
        }
        admin.batch_execute(&format!("DROP TABLE {}", ident(&table))).unwrap();
    }

    #[test]
    fn hostile_table_names_are_identifiers_never_sql() {
        let mut admin = admin();
        let victim = unique("victim");
        admin
            .batch_execute(&format!(
                "CREATE TABLE {victim} (id integer, value text); INSERT INTO {victim} VALUES (0, 'safe')"
            ))
            .unwrap();
        let hostile = [
            format!("{victim}; DROP TABLE {victim}; --"),
            format!("x\"; DROP TABLE {victim}; --"),
            format!("\"; DROP TABLE {victim}; --"),
            format!("it's'; DROP TABLE {victim}; --"),
            format!("{victim}\" (id int); DROP TABLE {victim}; --"),
            "Robert'); DROP TABLE students;--".to_string(),
        ];
        for name in &hostile {
            let mut s = open_ok(name, &[]);
            s.commit(b"{:ok true}", &Expect::Anything).unwrap();
            assert_eq!(s.load().unwrap().unwrap().bytes, b"{:ok true}");
            s.delete().unwrap();
            let value: String = admin
                .query_one(&format!("SELECT value FROM {victim} WHERE id = 0"), &[])
                .unwrap_or_else(|e| panic!("victim gone after {name:?}: {e}"))
                .get(0);
            assert_eq!(value, "safe");
            // The whole text became one table of exactly that name.
            let made: i64 =
                admin.query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[name]).unwrap().get(0);
            assert_eq!(made, 1, "table {name:?} made literally");
            admin.batch_execute(&format!("DROP TABLE {}", ident(name))).unwrap();
        }

        // Schema-qualified names, plain and quoted.
        let schema = unique("sch");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        open_ok(&format!("{schema}.plain"), &[]).commit(b"1", &Expect::Anything).unwrap();
        open_ok(&format!("\"{schema}\".\"Mixed.Case\"\"q\""), &[]).commit(b"2", &Expect::Anything).unwrap();
        let tables: Vec<String> = admin
            .query("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", &[&schema])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tables, ["Mixed.Case\"q", "plain"]);
        let e = open_err(&format!("nosuch_{schema}.t"), &[]);
        assert!(e.to_string().contains(&format!("schema \"nosuch_{schema}\" does not exist")), "{e}");
        let e = open_err("a.b.c", &[]);
        assert!(matches!(e, StoreError::Config { .. }) && e.to_string().contains("`table`"), "{e}");

        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE; DROP TABLE {victim}")).unwrap();
    }

    #[test]
    fn quoting_follows_what_postgresql_did_with_the_unquoted_name() {
        let q = |n: &str| quote_table(n);
        assert_eq!(q("my_table").unwrap(), "\"my_table\"");
        assert_eq!(q("MyTable").unwrap(), "\"mytable\"");
        assert_eq!(q("Public.MyTable").unwrap(), "\"public\".\"mytable\"");
        assert_eq!(q("\"MyTable\"").unwrap(), "\"MyTable\"");
        assert_eq!(q("s.\"My.T\"").unwrap(), "\"s\".\"My.T\"");
        assert_eq!(q("t; DROP TABLE x").unwrap(), "\"t; DROP TABLE x\"");
        assert_eq!(q("x\"y").unwrap(), "\"x\"\"y\"");
        assert_eq!(q("\"a\".\"b\".\"c\"").unwrap(), "\"\"\"a\"\".\"\"b\"\".\"\"c\"\"\"", "not a 2-part name: literal");
        assert!(q("a.b.c").is_err());
        assert!(q(".t").is_err());
        assert!(q("  ").is_err());
    }

    /// Ends the server session of the store whose application name is `app`,
    /// waiting until its process is gone.
    fn kill_session(admin: &mut Client, app: &str) {
        let killed: Vec<bool> = admin
            .query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1", &[&app])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(killed, [true], "one session of {app} ended");
    }

    #[test]
    fn a_killed_connection_is_replaced_on_the_next_call() {
        let mut admin = admin();
        let table = unique("reconnect");
        let app = unique("app");
        let mut s = open_ok(&table, &[("application-name", &app)]);
        let v = s.commit(b"1", &Expect::Anything).unwrap();

        kill_session(&mut admin, &app);
        assert_eq!(s.load().unwrap().unwrap().version, v, "load reconnects");
        kill_session(&mut admin, &app);
        let v = s.commit(b"2", &Expect::Version(v)).unwrap();
        kill_session(&mut admin, &app);
        s.commit(b"3", &Expect::Anything).unwrap();
        kill_session(&mut admin, &app);
        s.delete().unwrap();
        kill_session(&mut admin, &app);
        s.commit(b"4", &Expect::Nothing).unwrap();
        assert!(conflict(s.commit(b"5", &Expect::Version(v))), "the stale version stays stale");
        assert_eq!(s.load().unwrap().unwrap().bytes, b"4");

        // The table dropped under a live store comes back on the next call.
        admin.batch_execute(&format!("DROP TABLE {}", ident(&table))).unwrap();
        assert!(s.commit(b"6", &Expect::Anything).is_err());
        s.commit(b"7", &Expect::Anything).unwrap();
        assert_eq!(s.load().unwrap().unwrap().bytes, b"7");
        admin.batch_execute(&format!("DROP TABLE {}", ident(&table))).unwrap();
    }

    #[test]
    fn bad_credentials_and_unreachable_servers_fail_fast_and_clearly() {
        let s = server();
        let table = unique("unreached");
        let check = |e: &StoreError, wants: &str, started: Instant| {
            let text = e.to_string();
            assert!(text.contains(wants), "wanted {wants:?} in: {text}");
            assert!(text.contains(&table), "names the table: {text}");
            assert!(!text.contains(&s.password) && !text.contains("Wr0ng-pa55"), "no password in: {text}");
            assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        };

        let t = Instant::now();
        let e = open_err(&table, &[("password", "Wr0ng-pa55word")]);
        check(&e, &format!("password authentication failed for user \"{}\"", s.user), t);

        let t = Instant::now();
        let e = open(&Config::from_pairs(
            "postgres-db",
            &[("host", &s.host), ("port", &s.port), ("user", &s.user), ("dbname", &s.db), ("table", &table)],
        ))
        .err()
        .unwrap();
        check(&e, "asks for a password and none was given", t);

        let t = Instant::now();
        let e = open_err(&table, &[("dbname", "no_such_db")]);
        check(&e, "database \"no_such_db\" does not exist", t);

        // A port nothing listens on: bound and released again.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
        let t = Instant::now();
        let e = open_err(&table, &[("port", &port)]);
        check(&e, &format!("cannot connect to 127.0.0.1:{port}: connection refused"), t);

        // An address that never answers (TEST-NET-1): bounded by connect-timeout-ms.
        let t = Instant::now();
        let e = open_err(&table, &[("host", "192.0.2.1"), ("connect-timeout-ms", "300")]);
        check(&e, "cannot connect to 192.0.2.1:", t);
    }

    /// Whether the session of application `app` uses TLS, as the server sees it.
    fn session_uses_tls(admin: &mut Client, app: &str) -> bool {
        admin
            .query_one(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                &[&app],
            )
            .unwrap()
            .get(0)
    }

    #[test]
    fn tls_is_used_when_sslmode_asks_for_it() {
        let mut admin = admin();
        let s = server();
        let table = unique("tls");
        for (mode, root, encrypted) in [
            ("require", "", true),
            ("prefer", "", true),
            ("disable", "", false),
            ("verify-full", s.root_cert.as_str(), true),
            ("verify-ca", s.root_cert.as_str(), true),
        ] {
            let app = unique("tls_app");
            let mut store = open_ok(&table, &[("sslmode", mode), ("sslrootcert", root), ("application-name", &app)]);
            store.commit(mode.as_bytes(), &Expect::Anything).unwrap();
            assert_eq!(store.load().unwrap().unwrap().bytes, mode.as_bytes());
            assert_eq!(session_uses_tls(&mut admin, &app), encrypted, "sslmode={mode}");
        }
        // verify-full without a root that vouches for the self-signed certificate.
        let e = open_err(&table, &[("sslmode", "verify-full")]);
        let text = e.to_string();
        assert!(text.contains("cannot connect") && text.contains("TLS"), "{text}");
        assert!(!text.contains(&s.password), "{text}");
        admin.batch_execute(&format!("DROP TABLE {}", ident(&table))).unwrap();
    }

    #[test]
    fn unusable_settings_name_the_key_and_never_the_password() {
        let base = [("user", "u"), ("password", "s3cret-pw"), ("table", "t")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("port", "54x")], "`port`"),
            (&[("port", "70000")], "`port`"),
            (&[("sslmode", "sometimes")], "`sslmode`"),
            (&[("column-type", "jsonb")], "`column-type`"),
            (&[("row-id", "first")], "`row-id`"),
            (&[("connect-timeout-ms", "0")], "`connect-timeout-ms`"),
            (&[("sslrootcert", "/no/such/root.crt")], "`sslrootcert`"),
            (&[("table", "a.b.c")], "`table`"),
            (&[("table", "")], "`table`"),
        ];
        for (extra, key) in cases {
            let mut pairs: Vec<(&str, &str)> = base.to_vec();
            for (k, v) in extra.iter() {
                pairs.retain(|(pk, _)| pk != k);
                pairs.push((k, v));
            }
            let e = open(&Config::from_pairs("postgres-db", &pairs)).err().unwrap();
            assert!(matches!(e, StoreError::Config { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains(key) && !text.contains("s3cret-pw"), "{extra:?}: {text}");
        }
        for missing in ["user", "table"] {
            let pairs: Vec<_> = base.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = open(&Config::from_pairs("postgres-db", &pairs)).err().unwrap();
            assert!(e.to_string().contains(&format!("`{missing}` is required")), "{e}");
        }
    }
}
