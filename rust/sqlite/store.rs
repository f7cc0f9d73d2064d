//! The store: opening the database, and load, commit and delete on one row.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

use super::BACKEND;

/// How values are bound: the declared type of the table's `value` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    Text,
    Blob,
}

/// The identity of a file (device, inode), to notice a removed or replaced database.
type FileId = (u64, u64);

pub(super) struct Conn {
    db: Connection,
    value: ValueKind,
    file: Option<FileId>,
    /// The WAL file this connection writes, as found at its path on open.
    wal: Option<FileId>,
}

pub struct SqliteStore {
    path: PathBuf,
    /// The table name as a quoted SQL identifier.
    table: String,
    row_id: i64,
    create_type: ValueKind,
    busy_timeout: Duration,
    pub(super) conn: Option<Conn>,
    resource: Resource,
    /// The database file `open` created, until a commit or delete: a store
    /// closed before either (a construction that failed) removes it.
    pub(super) created: Option<FileId>,
}

/// Why a call failed: the store's error, or a conflict.
enum Failure {
    Sql(rusqlite::Error),
    Conflict,
    Other(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// The keys a SQLite store is configured with (made by
/// `clojure/duratom/backend/sqlite.clj`); any other key is an error at open.
/// Missing keys take the values of [`Default`] below, the one place where
/// defaults live; `path` and `table` have none.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    /// The database file; its directory must exist.
    path: Option<String>,
    table: Option<String>,
    row_id: i64,
    /// text or blob: the `value` column's type when the table is created.
    column_type: String,
    busy_timeout_ms: i64,
}

impl Default for Keys {
    fn default() -> Self {
        Keys { path: None, table: None, row_id: 0, column_type: "text".into(), busy_timeout_ms: 5000 }
    }
}

impl SqliteStore {
    pub(super) fn new(config: &Config) -> Result<SqliteStore, StoreError> {
        let keys: Keys = config.settings()?;
        let path = PathBuf::from(keys.path.ok_or_else(|| StoreError::config(BACKEND, "`path` is required"))?);
        if path.as_os_str().is_empty() {
            return Err(StoreError::config(BACKEND, "`path` is empty"));
        }
        let name = keys.table.ok_or_else(|| StoreError::config(BACKEND, "`table` is required"))?;
        let table = quote_table(&name)
            .map_err(|d| StoreError::config(BACKEND, format!("table name {d}")))?;
        let row_id = keys.row_id;
        let create_type = match keys.column_type.as_str() {
            "text" => ValueKind::Text,
            "blob" => ValueKind::Blob,
            other => {
                return Err(StoreError::config(
                    BACKEND,
                    format!("`column-type` must be text or blob, got `{other}`"),
                ))
            }
        };
        let busy_ms = keys.busy_timeout_ms;
        if !(0..=3_600_000).contains(&busy_ms) {
            return Err(StoreError::config(
                BACKEND,
                format!("`busy-timeout-ms` must be 0..3600000, got {busy_ms}"),
            ));
        }
        let resource = Resource {
            backend: BACKEND,
            name: format!("{} table {name} row {row_id}", path.display()),
        };
        Ok(SqliteStore {
            path,
            table,
            row_id,
            create_type,
            busy_timeout: Duration::from_millis(busy_ms as u64),
            conn: None,
            resource,
            created: None,
        })
    }

    fn error(&self, op: &str, e: rusqlite::Error) -> StoreError {
        StoreError::backend(&self.resource, op, describe(&e, self.busy_timeout))
    }

    /// Opens the database, sets WAL and FULL sync, and finds or creates the table.
    pub(super) fn connect(&self) -> Result<Conn, StoreError> {
        super::locks::install();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(StoreError::backend(
                &self.resource,
                "open",
                format!("the directory {} does not exist", dir.display()),
            ));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db =
            Connection::open_with_flags(&self.path, flags).map_err(|e| self.error("open", e))?;
        db.busy_timeout(self.busy_timeout)
            .map_err(|e| self.error("open", e))?;
        let mode: String = db
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| self.error("setting WAL mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::backend(
                &self.resource,
                "open",
                format!("the database cannot use WAL mode (it reports journal_mode {mode}), so commits could not be made durable"),
            ));
        }
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.error("open", e))?;
        let value = match self.value_column(&db)? {
            Some(kind) => kind,
            None => {
                let ty = match self.create_type {
                    ValueKind::Text => "TEXT",
                    ValueKind::Blob => "BLOB",
                };
                db.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (id INTEGER, value {ty})",
                    self.table
                ))
                .map_err(|e| self.error("creating the table", e))?;
                self.value_column(&db)?.ok_or_else(|| {
                    StoreError::backend(
                        &self.resource,
                        "open",
                        "the table is missing after creating it",
                    )
                })?
            }
        };
        // The first read above opened (or created) the WAL.
        Ok(Conn {
            db,
            value,
            file: file_id(&self.path),
            wal: existing_file_id(&self.wal_path()),
        })
    }

    fn wal_path(&self) -> PathBuf {
        self.beside("-wal")
    }

    /// The path of the database's companion file with `suffix`.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Whether the database file is missing, so that opening creates it.
    pub(super) fn missing(&self) -> bool {
        !self.path.exists()
    }

    pub(super) fn file_id(&self) -> Option<FileId> {
        existing_file_id(&self.path)
    }

    /// Whether the WAL file the connection writes is no longer the file at
    /// the WAL's path (removed, or replaced): what it holds would be lost
    /// when the connection closes, and other connections cannot read it.
    fn wal_detached(&self, conn: &Conn) -> bool {
        conn.wal.is_some() && conn.wal != file_id(&self.wal_path())
    }

    /// After the WAL was removed under the connection: copies every commit
    /// it holds into the database file (a checkpoint, which fsyncs the
    /// file), then closes the connection so the next call opens a WAL at its
    /// path. Returns what happened, worded for the report; an error when the
    /// copy could not be completed (the connection is kept, holding those
    /// commits, and the next call tries again).
    fn rescue_detached_wal(&mut self) -> Result<String, StoreError> {
        let wal = self.wal_path();
        let conn = self.conn.as_mut().expect("called with a connection");
        let lost = |detail: String| {
            format!(
                "the WAL file {} was removed or replaced while open, and the commits it holds could not be copied into the database file ({detail}); they are lost if this process ends before a later call copies them",
                wal.display()
            )
        };
        let (busy, log, done): (i64, i64, i64) = conn
            .db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| StoreError::backend(&self.resource, "checkpoint", lost(describe(&e, self.busy_timeout))))?;
        if busy != 0 || log != done {
            return Err(StoreError::backend(
                &self.resource,
                "checkpoint",
                lost(format!("another connection kept it busy for {} ms; {done} of {log} pages copied", self.busy_timeout.as_millis())),
            ));
        }
        self.conn = None;
        Ok(format!(
            "the WAL file {} was removed or replaced while open; the commits it held were copied into the database file, and the database was reopened",
            wal.display()
        ))
    }

    /// The kind of the table's `value` column; `None` when there is no table.
    /// A table without `id` and `value` columns is not one of ours: an error.
    fn value_column(&self, db: &Connection) -> Result<Option<ValueKind>, StoreError> {
        let read = || -> Result<Vec<(String, String)>, rusqlite::Error> {
            let mut stmt = db.prepare(&format!("PRAGMA table_info({})", self.table))?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            rows.collect()
        };
        let columns = read().map_err(|e| self.error("reading the table's columns", e))?;
        if columns.is_empty() {
            return Ok(None);
        }
        let find = |name: &str| columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
        match (find("id"), find("value")) {
            (Some(_), Some((_, ty))) => {
                Ok(Some(if ty.to_ascii_uppercase().contains("BLOB") { ValueKind::Blob } else { ValueKind::Text }))
            }
            _ => Err(StoreError::backend(
                &self.resource,
                "open",
                "the table exists but has no `id` and `value` columns, so it is not a duratom table",
            )),
        }
    }

    /// The open connection, reopened when the database file was removed or
    /// replaced since it was opened (or the last call broke it).
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        let stale = match &self.conn {
            None => true,
            Some(c) => c.file.is_some() && c.file != file_id(&self.path),
        };
        if stale {
            self.conn = None;
            self.conn = Some(self.connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A removed WAL found before a call: its commits are saved into the
    /// database file and the call fails, reporting it, with nothing written.
    fn check_wal_before(&mut self, op: &str) -> Result<(), StoreError> {
        // A removed or replaced database file is the stale check's (conn).
        match &self.conn {
            Some(c) if c.file == file_id(&self.path) && self.wal_detached(c) => {
                let saved = self.rescue_detached_wal()?;
                Err(StoreError::backend(&self.resource, op, format!("{saved}; nothing was written by this call, which can be retried")))
            }
            _ => Ok(()),
        }
    }

    /// Runs `f` on the connection, turning failures into StoreErrors; an I/O
    /// or similar failure drops the connection, so the next call reopens.
    fn run<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&mut Conn, i64) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let row_id = self.row_id;
        self.check_wal_before(op)?;
        let conn = self.conn()?;
        match f(conn, row_id) {
            Ok(v) => Ok(v),
            Err(Failure::Conflict) => Err(StoreError::Conflict {
                resource: self.resource.clone(),
            }),
            Err(Failure::Other(e)) => Err(e),
            Err(Failure::Sql(e)) => {
                if !matches!(
                    code(&e),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) {
                    self.conn = None;
                }
                Err(self.error(op, e))
            }
        }
    }
}

/// The stored bytes of row `id` (None when absent or NULL).
fn read_row(db: &Connection, table: &str, id: i64) -> Result<Option<Vec<u8>>, Failure> {
    let value = db
        .query_row(
            &format!("SELECT value FROM {table} WHERE id = ?1 LIMIT 1"),
            [id],
            |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Null => Ok(None),
                    ValueRef::Text(t) => Ok(Some(t.to_vec())),
                    ValueRef::Blob(b) => Ok(Some(b.to_vec())),
                    ValueRef::Integer(_) | ValueRef::Real(_) => Err(()),
                })
            },
        )
        .optional()?;
    match value {
        None => Ok(None),
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(())) => Err(Failure::Other(StoreError::backend(
            &Resource {
                backend: BACKEND,
                name: String::new(),
            },
            "load",
            "the value column holds a number, not text or bytes",
        ))),
    }
}

/// Writes `bytes` into row `id`: UPDATE, or INSERT when there is no such row.
fn write_row(
    db: &Connection,
    table: &str,
    kind: ValueKind,
    id: i64,
    bytes: &[u8],
) -> Result<(), Failure> {
    let n = match kind {
        ValueKind::Blob => db.execute(
            &format!("UPDATE {table} SET value = ?1 WHERE id = ?2"),
            rusqlite::params![bytes, id],
        )?,
        ValueKind::Text => db.execute(
            &format!("UPDATE {table} SET value = ?1 WHERE id = ?2"),
            rusqlite::params![text(bytes)?, id],
        )?,
    };
    if n == 0 {
        match kind {
            ValueKind::Blob => db.execute(
                &format!("INSERT INTO {table} (id, value) VALUES (?1, ?2)"),
                rusqlite::params![id, bytes],
            )?,
            ValueKind::Text => db.execute(
                &format!("INSERT INTO {table} (id, value) VALUES (?1, ?2)"),
                rusqlite::params![id, text(bytes)?],
            )?,
        };
    }
    Ok(())
}

/// A text column takes UTF-8 text only (a binary `:rw` needs a blob column).
fn text(bytes: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::Other(StoreError::config(
            BACKEND,
            format!("the value is not UTF-8 text ({e}) but the table's value column is text; use :column-type :blob for a binary :rw"),
        ))
    })
}

impl Drop for SqliteStore {
    /// Removes the database file `open` created when nothing was committed
    /// since, it is still that file, and closing left no other connection
    /// (SQLite removed the WAL and shared-memory files as the last one).
    fn drop(&mut self) {
        let Some(created) = self.created.take() else { return };
        self.conn = None;
        if self.file_id() == Some(created) && !self.beside("-wal").exists() && !self.beside("-shm").exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        let table = self.table.clone();
        let resource = self.resource.clone();
        self.run("load", |c, id| {
            let bytes = read_row(&c.db, &table, id).map_err(|f| with_resource(f, &resource))?;
            Ok(bytes.map(|bytes| {
                let version = Version::of_content(&bytes);
                Stored { bytes, version }
            }))
        })
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        self.created = None;
        let table = self.table.clone();
        let resource = self.resource.clone();
        let version = Version::of_content(bytes);
        let version = self.run("commit", |c, id| {
            let kind = c.value;
            // BEGIN IMMEDIATE takes the write lock at once: nobody writes
            // between the compare and the write.
            let tx =
                c.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match expect {
                Expect::Anything { .. } => {}
                Expect::Nothing => {
                    if read_row(&tx, &table, id)
                        .map_err(|f| with_resource(f, &resource))?
                        .is_some()
                    {
                        return Err(Failure::Conflict);
                    }
                }
                Expect::Version(expected) => {
                    match read_row(&tx, &table, id).map_err(|f| with_resource(f, &resource))? {
                        Some(stored) if Version::of_content(&stored) == *expected => {}
                        _ => return Err(Failure::Conflict),
                    }
                }
            }
            write_row(&tx, &table, kind, id, bytes).map_err(|f| with_resource(f, &resource))?;
            tx.commit()?;
            Ok(version.clone())
        })?;
        // The commit went into the WAL the connection holds; if that file
        // is no longer at its path, the commit is not durable until copied
        // into the database file, so the caller learns it only as unknown.
        let wal = self.wal_path();
        if let Some(c) = self.conn.as_mut().filter(|c| c.wal.is_none()) {
            c.wal = existing_file_id(&wal);
        }
        if self.conn.as_ref().is_some_and(|c| self.wal_detached(c)) {
            let detail = match self.rescue_detached_wal() {
                Ok(saved) => format!("{saved}; this commit is among them"),
                Err(e) => e.to_string(),
            };
            return Err(StoreError::outcome_unknown(&self.resource, "commit", detail));
        }
        Ok(version)
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        self.created = None;
        let table = self.table.clone();
        self.run("delete", |c, id| {
            c.db.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])?;
            Ok(())
        })
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// Puts the store's resource into an error made where it was not at hand.
fn with_resource(f: Failure, resource: &Resource) -> Failure {
    match f {
        Failure::Other(StoreError::Backend { op, detail, .. }) => {
            Failure::Other(StoreError::Backend {
                resource: resource.clone(),
                op,
                detail,
            })
        }
        other => other,
    }
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(err, _) => Some(err.code),
        _ => None,
    }
}

/// A rusqlite error worded for people: a lock held elsewhere says so.
fn describe(e: &rusqlite::Error, busy: Duration) -> String {
    match code(e) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "the database is locked by another connection (waited {} ms): {e}",
            busy.as_millis()
        ),
        Some(ErrorCode::CannotOpen) => format!("cannot open the database file: {e}"),
        _ => e.to_string(),
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    // Missing file: a sentinel that never equals a real identity, so a
    // connection to a removed file counts as stale.
    Some(
        std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((u64::MAX, u64::MAX)),
    )
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<FileId> {
    None
}

/// The identity of the file at `path`; `None` when there is none (or no
/// identities on this platform).
fn existing_file_id(path: &Path) -> Option<FileId> {
    if path.exists() {
        file_id(path)
    } else {
        None
    }
}

/// The table name as one quoted SQLite identifier. SQLite compares
/// identifiers without regard to ASCII case, quoted or not, so the table the
/// original library created under the same name (unquoted) is this one.
pub(super) fn quote_table(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name.contains('\0') {
        return Err("contains a NUL character".into());
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}
