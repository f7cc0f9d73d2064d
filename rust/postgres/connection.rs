//! A connection: connecting (with TLS as configured), creating the table
//! when it is missing, and preparing the statements once.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use postgres::types::Type;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use super::errors::{describe, sqlstate};
use super::tls::{tls_failure, MakeTlsConnector};
use crate::store::{Resource, StoreError};

/// Everything a new connection is made from: where, how (TLS, time limits)
/// and to which table. Built once per store from its settings.
pub(super) struct Connector {
    pub(super) pg: tokio_postgres::Config,
    pub(super) tls: Option<MakeTlsConnector>,
    /// `host:port`, for connection error messages.
    pub(super) endpoint: String,
    pub(super) connect_timeout: Duration,
    /// The session's statement_timeout: a little less than the store's bound.
    pub(super) server_timeout: Duration,
    /// The table as quoted SQL identifiers, e.g. `"public"."my_table"`.
    pub(super) table_sql: String,
    /// The `value` column type used when the table is created.
    pub(super) create_type: &'static str,
}

/// What the table's `value` column holds, as found on the server (which may
/// differ from `column-type` for a table that already existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ValueKind {
    Text,
    Bytea,
}

/// The task that drives a connection's socket, on the store's own runtime.
/// Dropping it aborts the task, which closes the socket the next time that
/// runtime runs (`PostgresStore::run` lets it before it returns): a
/// connection given up on (the server stopped answering) must not linger.
pub(super) struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection with the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    _driver: Driver,
    /// Set while a write's committing message is out and unanswered: if the
    /// wait is cut short then, the write may or may not have taken effect.
    pub(super) write_sent: bool,
    pub(super) value: ValueKind,
    pub(super) load: Statement,
    pub(super) update_any: Statement,
    pub(super) update_if: Statement,
    pub(super) insert: Statement,
    pub(super) occupied: Statement,
    pub(super) lock: Statement,
    pub(super) delete: Statement,
    /// The quoted table name, bound as text for the lock statement.
    pub(super) table: String,
}

impl Connector {
    /// A new connection, with the session's server-side time limits set, the
    /// table created if missing and the statements prepared. Runs on the
    /// store's own runtime; the caller bounds how long it may take.
    pub(super) async fn connect(&self, resource: &Resource, op: &str) -> Result<Conn, StoreError> {
        let cannot = |e: tokio_postgres::Error| {
            StoreError::backend(
                resource,
                op,
                format!("cannot connect to {}: {}", self.endpoint, self.connect_reason(&e)),
            )
        };
        let (client, driver) = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.pg.connect(tls.clone()).await.map_err(cannot)?;
                (client, Driver(tokio::spawn(async move { let _ = connection.await; })))
            }
            None => {
                let (client, connection) = self.pg.connect(NoTls).await.map_err(cannot)?;
                (client, Driver(tokio::spawn(async move { let _ = connection.await; })))
            }
        };
        let r = resource;
        let t = &self.table_sql;

        // The server ends a statement, or a wait for a lock another session
        // holds, a little before the client's own bound, so that its clearer
        // error ("lock held") is the one reported; the lock wait ends first.
        let (statement_ms, lock_ms) = (self.server_timeout.as_millis(), self.lock_timeout().as_millis());
        client
            .batch_execute(&format!("SET statement_timeout = {statement_ms}; SET lock_timeout = {lock_ms}"))
            .await
            .map_err(|e| StoreError::backend(r, "setting the session's time limits", describe(&e)))?;

        // Look before creating: CREATE TABLE IF NOT EXISTS needs the CREATE
        // privilege on the schema even when the table exists, and a role that
        // may only read and write an existing table must still work.
        let exists: bool = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[t])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| StoreError::backend(r, "looking up the table", describe(&e)))?;
        if !exists {
            let create = format!("CREATE TABLE IF NOT EXISTS {t} (id integer, value {})", self.create_type);
            match client.batch_execute(&create).await {
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
        let prepare = async |sql: String| {
            client.prepare(&sql).await.map_err(|e| StoreError::backend(r, "preparing statements", describe(&e)))
        };
        let load = prepare(format!("SELECT value, xmin::text FROM {t} WHERE id = $1::bigint LIMIT 1")).await?;
        let update_any = prepare(format!("UPDATE {t} SET value = $1 WHERE id = $2::bigint RETURNING xmin::text")).await?;
        let update_if = prepare(format!(
            "UPDATE {t} SET value = $1 WHERE id = $2::bigint AND xmin::text = $3 RETURNING xmin::text"
        ))
        .await?;
        let insert = prepare(format!("INSERT INTO {t} (id, value) VALUES ($1::bigint, $2) RETURNING xmin::text")).await?;
        let occupied = prepare(format!("SELECT 1 FROM {t} WHERE id = $1::bigint AND value IS NOT NULL LIMIT 1")).await?;
        let delete = prepare(format!("DELETE FROM {t} WHERE id = $1::bigint")).await?;
        // Serialises inserts of one row across every client: the original's
        // tables have no unique key on id, so nothing else stops two writers
        // from both inserting. Keyed on the table's oid, so "t" and
        // "public.t" take the same lock.
        let lock = prepare(
            "SELECT pg_advisory_xact_lock(hashtextextended('duratom ' || $1::text::regclass::oid::text || ' ' || $2::bigint::text, 0))"
                .to_string(),
        )
        .await?;

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
        Ok(Conn {
            client,
            _driver: driver,
            write_sent: false,
            value,
            load,
            update_any,
            update_if,
            insert,
            occupied,
            lock,
            delete,
            table: t.clone(),
        })
    }

    /// The session's lock_timeout: a little less than its statement_timeout,
    /// so that a wait for another session's lock says so.
    pub(super) fn lock_timeout(&self) -> Duration {
        (self.server_timeout - self.server_timeout / 10).max(Duration::from_millis(1))
    }

    /// A connect error in plain words: refused, timed out, or what the server said.
    fn connect_reason(&self, e: &tokio_postgres::Error) -> String {
        if let Some(why) = tls_failure(e) {
            return why;
        }
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
