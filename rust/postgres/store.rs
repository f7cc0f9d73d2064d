//! The store: one row of one table, built from its settings, and how each
//! operation runs on the kept connection.

use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use tokio::runtime::Runtime;
use tokio_postgres::config::SslMode;
use tokio_postgres::Statement;

use super::connection::{Conn, Connector, ValueKind};
use super::errors::{ambiguous, connection_lost, describe, sqlstate, stale_statements, Failure};
use super::settings::Settings;
use super::table_name::quote_table;
use super::tls::{tls_connector, TlsMode};
use super::BACKEND;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

pub struct PostgresStore {
    resource: Resource,
    /// How a new connection is made.
    connector: Connector,
    /// Every operation, connecting included, ends within this (`timeout-ms`).
    timeout: Duration,
    row_id: i64,
    conn: Option<Conn>,
    /// Set while the current operation runs again after a write of its
    /// first attempt was sent and the connection was lost unanswered: if the
    /// rerun fails too, the write may still have landed (what the loss said).
    unanswered: Option<String>,
    /// This store's own single-threaded runtime, which drives its connection
    /// on the calling thread only while an operation runs (see `run`). Last
    /// field, so the connection goes before its runtime.
    runtime: Arc<Runtime>,
}

/// The runtime of one store: current-thread, so it keeps no thread and the
/// thread that calls an operation drives the socket itself, instead of
/// handing each round trip to a worker of a shared runtime and back (six
/// context switches per commit instead of one).
fn own_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()
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
    /// Checks the settings and builds the store from them; does not connect.
    pub(super) fn new(settings: Settings) -> Result<PostgresStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);

        let host = settings.host.as_str();
        if host.is_empty() {
            return Err(bad("`host` is empty".into()));
        }
        let port = match settings.port {
            p if (1..=65535).contains(&p) => p as u16,
            p => return Err(bad(format!("`port` must be between 1 and 65535, got {p}"))),
        };
        let user = settings.user.as_deref().ok_or_else(|| bad("`user` is required".into()))?;
        if user.is_empty() {
            return Err(bad("`user` is empty".into()));
        }
        let dbname = settings.dbname.as_deref().unwrap_or(user);
        let table = settings.table.as_deref().ok_or_else(|| bad("`table` is required".into()))?;
        let table_sql = quote_table(table).map_err(|d| bad(format!("`table` {d}")))?;
        let row_id = settings.row_id;
        let create_type = match settings.column_type.as_str() {
            "text" => "text",
            "bytea" => "bytea",
            other => return Err(bad(format!("`column-type` must be text or bytea, got `{other}`"))),
        };
        let connect_timeout = match settings.connect_timeout_ms {
            ms if ms > 0 => Duration::from_millis(ms as u64),
            ms => return Err(bad(format!("`connect-timeout-ms` must be positive, got {ms}"))),
        };
        let timeout = match settings.timeout_ms {
            ms if ms > 0 => Duration::from_millis(ms as u64),
            ms => return Err(bad(format!("`timeout-ms` must be positive, got {ms}"))),
        };
        // The server gives up a little earlier than the client, so that its
        // own error (lock held, statement too long) reaches the caller.
        let server_timeout = (timeout - timeout.min(Duration::from_secs(5)) / 5).max(Duration::from_millis(1));
        // Bounds how long a write to a vanished server (network partition)
        // can hang before the connection is declared dead; 0 turns it off.
        let tcp_user_timeout = match settings.tcp_user_timeout_ms {
            None => Some(timeout),
            Some(0) => None,
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            Some(ms) => return Err(bad(format!("`tcp-user-timeout-ms` must not be negative, got {ms}"))),
        };
        let root_cert = match settings.sslrootcert.as_deref() {
            None | Some("") => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| bad(format!("`sslrootcert` {path}: {e}")))?),
        };
        let mode = TlsMode::from_sslmode(&settings.sslmode, root_cert.is_some()).map_err(bad)?;
        let tls = tls_connector(mode, root_cert.as_deref())?;

        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name(&settings.application_name)
            .connect_timeout(connect_timeout)
            .ssl_mode(match mode {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            });
        if let Some(t) = tcp_user_timeout {
            pg.tcp_user_timeout(t);
        }
        // Probes an idle connection, so a dead peer is noticed between calls.
        pg.keepalives(true).keepalives_idle(timeout.max(Duration::from_secs(1)));
        if let Some(password) = &settings.password {
            pg.password(password);
        }

        let endpoint = format!("{host}:{port}");
        let resource =
            Resource { backend: BACKEND, name: format!("table \"{table}\" row {row_id} ({endpoint}/{dbname})") };
        let runtime = own_runtime()
            .map_err(|e| StoreError::backend(&resource, "open", format!("cannot make the I/O runtime: {e}")))?;
        Ok(PostgresStore {
            resource,
            connector: Connector { pg, tls, endpoint, connect_timeout, server_timeout, table_sql, create_type },
            timeout,
            row_id,
            conn: None,
            unanswered: None,
            runtime: Arc::new(runtime),
        })
    }

    /// Runs one operation on the kept connection, connecting first if there
    /// is none, and within `timeout` (connecting included): past it the
    /// connection is closed and the call fails, saying whether the server
    /// never answered a connect, stopped answering, or went silent after a
    /// write was sent (outcome unknown).
    ///
    /// If a kept connection turns out to be dead (the server restarted, an
    /// administrator ended it, the network dropped it while idle), the
    /// operation runs once more on a fresh connection, unless the failure hit
    /// a write while it was being committed (`ambiguous`) and running it
    /// again is not harmless (`rerun_harmless`): a conditional write that did
    /// land would then report a false conflict. A fresh connection that fails
    /// is not retried, so a down server costs one connect attempt per call.
    pub(super) fn run<T>(
        &mut self,
        op: &str,
        rerun_harmless: bool,
        mut attempt: impl AsyncFnMut(&mut Conn, i64) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        // A clone, so the future below may borrow `self` mutably.
        let runtime = Arc::clone(&self.runtime);
        let bound = self.timeout;
        self.unanswered = None;
        let result = runtime.block_on(async {
            let result = match tokio::time::timeout(bound, self.attempts(op, rerun_harmless, &mut attempt)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(self.timed_out(op)),
            };
            if result.is_err() {
                // A connection dropped on the way out (given up on, or lost)
                // aborted its driver task, but the task, and with it the
                // socket, goes only when this runtime next runs it: yield
                // once so that happens now, not at the next call. A stopped
                // server process then finds its socket closed when it
                // continues, and ends.
                tokio::task::yield_now().await;
            }
            result
        });
        match (result, self.unanswered.take()) {
            // The rerun (or its connect) failed after the first attempt's
            // write went out unanswered: that write may have landed.
            (Err(e @ (StoreError::Backend { .. } | StoreError::Io { .. })), Some(first)) => {
                Err(StoreError::outcome_unknown(
                    &self.resource,
                    op,
                    format!("{first}; running it again on a new connection failed: {e}"),
                ))
            }
            (result, _) => result,
        }
    }

    async fn attempts<T>(
        &mut self,
        op: &str,
        rerun_harmless: bool,
        attempt: &mut impl AsyncFnMut(&mut Conn, i64) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut may_retry = true;
        loop {
            if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                self.conn = None;
            }
            if self.conn.is_none() {
                may_retry = false;
                let fresh = self.connector.connect(&self.resource, op).await?;
                self.conn = Some(fresh);
            }
            let row_id = self.row_id;
            let conn = self.conn.as_mut().expect("connected above");
            conn.write_sent = false;
            match attempt(conn, row_id).await {
                Ok(v) => return Ok(v),
                // After a write that went out unanswered, a conflict may be
                // that write itself, landed: only reading storage can tell.
                Err(Failure::Conflict) => {
                    return Err(match &self.unanswered {
                        Some(first) => StoreError::outcome_unknown(
                            &self.resource,
                            op,
                            format!("{first}; run again on a new connection, it found another version stored"),
                        ),
                        None => StoreError::Conflict { resource: self.resource.clone() },
                    })
                }
                Err(Failure::Invalid(detail)) => return Err(StoreError::backend(&self.resource, op, detail)),
                Err(Failure::Pg { error, ambiguous }) => {
                    let lost = connection_lost(&error) || conn.client.is_closed();
                    if lost || stale_statements(&error) {
                        self.conn = None; // the next call reconnects and prepares again
                    }
                    if lost && may_retry && (!ambiguous || rerun_harmless) {
                        may_retry = false;
                        if ambiguous {
                            self.unanswered = Some(format!(
                                "the write was sent and the connection to {} was lost before it answered: {}",
                                self.connector.endpoint,
                                describe(&error)
                            ));
                        }
                        continue;
                    }
                    if lost {
                        let detail = format!("lost the connection to {}: {}", self.connector.endpoint, describe(&error));
                        return Err(if ambiguous {
                            StoreError::outcome_unknown(&self.resource, op, detail)
                        } else {
                            StoreError::backend(&self.resource, op, detail)
                        });
                    }
                    return Err(StoreError::backend(&self.resource, op, self.server_error(&error)));
                }
            }
        }
    }

    /// What a server error means, saying which time limit ended a wait.
    fn server_error(&self, error: &tokio_postgres::Error) -> String {
        match sqlstate(error) {
            Some("55P03") => format!(
                "another session holds a lock on the row; gave up after waiting {} ms (lock_timeout, from timeout-ms): {}",
                self.connector.lock_timeout().as_millis(),
                describe(error)
            ),
            Some("57014") => format!(
                "the server ended the statement after {} ms (statement_timeout, from timeout-ms) or it was cancelled: {}",
                self.connector.server_timeout.as_millis(),
                describe(error)
            ),
            _ => describe(error),
        }
    }

    /// The error for an operation cut short by `timeout`. The connection is
    /// closed (the server may still be stuck in the middle of it).
    fn timed_out(&mut self, op: &str) -> StoreError {
        let ms = self.timeout.as_millis();
        match self.conn.take() {
            None => StoreError::backend(
                &self.resource,
                op,
                format!("cannot connect to {}: no complete answer within {ms} ms (timeout-ms)", self.connector.endpoint),
            ),
            Some(c) if c.write_sent => StoreError::outcome_unknown(
                &self.resource,
                op,
                format!(
                    "the server at {} did not answer within {ms} ms (timeout-ms) after the write was sent; \
                     the connection was closed",
                    self.connector.endpoint
                ),
            ),
            Some(_) => StoreError::backend(
                &self.resource,
                op,
                format!(
                    "the server at {} did not answer within {ms} ms (timeout-ms: stopped, overloaded or unreachable); \
                     the connection was closed",
                    self.connector.endpoint
                ),
            ),
        }
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.run("load", true, async |c: &mut Conn, id: i64| {
            let rows = c.client.query(&c.load, &[&id]).await?;
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
        // Writing the same bytes twice is harmless for an unconditional write
        // and for a compare-and-set (a rerun that meets its own first write
        // reports a conflict, which `attempts` turns into outcome unknown);
        // a create run again could not tell its own row from another's.
        let rerun_harmless = !matches!(expect, Expect::Nothing);
        self.run("commit", rerun_harmless, async |c: &mut Conn, id: i64| {
            let value = param(c.value, bytes)?;
            let value = value.sql();
            match expect {
                Expect::Anything { .. } => {
                    // The usual case, one round trip: the row is there.
                    c.write_sent = true;
                    let updated = c.client.query(&c.update_any, &[value, &id]).await.map_err(ambiguous)?;
                    c.write_sent = false;
                    if let Some(v) = first_xmin(&updated)? {
                        return Ok(Version(v));
                    }
                    // No row yet: insert under the row's lock, after looking
                    // again in case another writer inserted while we waited.
                    let tx = c.client.transaction().await?;
                    tx.execute(&c.lock, &[&c.table, &id]).await?;
                    write_and_commit(tx, &c.update_any, &c.insert, &mut c.write_sent, value, id).await
                }
                Expect::Version(expected) => {
                    // One round trip: every commit outside shared mode takes
                    // this path. Applied late by a server that stalled, it
                    // finds another xmin and changes nothing.
                    c.write_sent = true;
                    let updated = c.client.query(&c.update_if, &[value, &id, &expected.0]).await.map_err(ambiguous)?;
                    c.write_sent = false;
                    match first_xmin(&updated)? {
                        Some(v) => Ok(Version(v)),
                        None => Err(Failure::Conflict),
                    }
                }
                Expect::Nothing => {
                    let tx = c.client.transaction().await?;
                    tx.execute(&c.lock, &[&c.table, &id]).await?;
                    if !tx.query(&c.occupied, &[&id]).await?.is_empty() {
                        tx.rollback().await?;
                        return Err(Failure::Conflict);
                    }
                    // A row whose value is NULL counts as empty: fill it in.
                    write_and_commit(tx, &c.update_any, &c.insert, &mut c.write_sent, value, id).await
                }
            }
        })
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        // Deleting twice is the same as deleting once, so a rerun is harmless.
        self.run("delete", true, async |c: &mut Conn, id: i64| {
            c.client.execute(&c.delete, &[&id]).await?;
            Ok(())
        })
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// The new `xmin` an `UPDATE ... RETURNING xmin::text` reports, if it hit a row.
/// In `tx`, which holds the row's lock: updates the row, or inserts it when
/// there is none, then commits, with `write_sent` set while the commit is
/// out. Returns the row's new version.
async fn write_and_commit(
    tx: tokio_postgres::Transaction<'_>,
    update_any: &Statement,
    insert: &Statement,
    write_sent: &mut bool,
    value: &(dyn ToSql + Sync),
    id: i64,
) -> Result<Version, Failure> {
    let v = match first_xmin(&tx.query(update_any, &[value, &id]).await?)? {
        Some(v) => v,
        None => tx.query_one(insert, &[&id, value]).await?.try_get(0)?,
    };
    *write_sent = true;
    tx.commit().await.map_err(ambiguous)?;
    *write_sent = false;
    Ok(Version(v))
}

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
