//! The store: built from the settings, and load, commit and delete on one
//! row (a removed WAL's commits saved first).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::connection::{beside, existing_file_id, file_id, Conn, FileId, ValueKind};
use super::errors::{describe, is_busy, with_resource, Failure};
use super::log;
use super::settings::Settings;
use super::BACKEND;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

pub struct SqliteStore {
    path: PathBuf,
    /// The table name as a quoted SQL identifier.
    table: String,
    /// Log mode: the records table's name, a quoted SQL identifier.
    log: Option<String>,
    /// The records table's name, unquoted (see `log::has_records`).
    records_name: String,
    row_id: i64,
    create_type: ValueKind,
    busy_timeout: Duration,
    conn: Option<Conn>,
    resource: Resource,
    /// The database file `open` created, until a commit or delete: a store
    /// closed before either (a construction that failed) removes it.
    created: Option<FileId>,
}

impl SqliteStore {
    /// Checks the settings and opens the database (creating the file and
    /// the table when missing), so that a wrong path fails at construction.
    pub(super) fn open(settings: Settings) -> Result<SqliteStore, StoreError> {
        let mut store = SqliteStore::new(settings)?;
        remove_abandoned_removals(store.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")));
        let missing = !store.path.exists();
        store.conn = Some(store.connect()?);
        if missing {
            store.created = existing_file_id(&store.path);
        }
        Ok(store)
    }

    /// Checks the settings; does not open the database.
    fn new(settings: Settings) -> Result<SqliteStore, StoreError> {
        let path = PathBuf::from(settings.path.ok_or_else(|| StoreError::config(BACKEND, "`path` is required"))?);
        if path.as_os_str().is_empty() {
            return Err(StoreError::config(BACKEND, "`path` is empty"));
        }
        let name = settings.table.ok_or_else(|| StoreError::config(BACKEND, "`table` is required"))?;
        let table = quote_table(&name)
            .map_err(|d| StoreError::config(BACKEND, format!("table name {d}")))?;
        let row_id = settings.row_id;
        let create_type = match settings.column_type.as_str() {
            "text" => ValueKind::Text,
            "blob" => ValueKind::Blob,
            other => {
                return Err(StoreError::config(
                    BACKEND,
                    format!("`column-type` must be text or blob, got `{other}`"),
                ))
            }
        };
        let busy_ms = settings.busy_timeout_ms;
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
        let records_name = log::records_name(&name);
        let log = settings.log.then(|| log::quoted(&records_name));
        Ok(SqliteStore {
            path,
            table,
            log,
            records_name,
            row_id,
            create_type,
            busy_timeout: Duration::from_millis(busy_ms as u64),
            conn: None,
            resource,
            created: None,
        })
    }

    /// After a write (`op`: commit or append) returned from SQLite: whether
    /// it is where it stays. Outcome unknown when not.
    fn after_write(&mut self, op: &str) -> Result<(), StoreError> {
        // The write went into the database file the connection holds; if
        // another file is at its path now (or none), it may be lost with the
        // one it went to.
        if self.conn.as_ref().is_some_and(|c| c.file.is_some() && c.file != file_id(&self.path)) {
            self.conn = None;
            return Err(StoreError::outcome_unknown(
                &self.resource,
                op,
                format!("the database file {} was removed or replaced during the {op}, which went to the file that was there", self.path.display()),
            ));
        }
        // The write went into the WAL the connection holds; if that file is
        // no longer at its path, it is not durable until copied into the
        // database file, so the caller learns it only as unknown.
        let wal = self.wal_path();
        if let Some(c) = self.conn.as_mut().filter(|c| c.wal.is_none()) {
            c.wal = existing_file_id(&wal);
        }
        if self.conn.as_ref().is_some_and(|c| self.wal_detached(c)) {
            let detail = match self.rescue_detached_wal() {
                Ok(saved) => format!("{saved}; this {op} is among them"),
                Err(e) => e.to_string(),
            };
            return Err(StoreError::outcome_unknown(&self.resource, op, detail));
        }
        Ok(())
    }

    /// The tables this store writes: the user's, and in log mode the records table.
    fn tables(&self) -> Vec<&str> {
        std::iter::once(self.table.as_str()).chain(self.log.as_deref()).collect()
    }

    fn error(&self, op: &str, e: rusqlite::Error) -> StoreError {
        StoreError::backend(&self.resource, op, describe(&e, self.busy_timeout))
    }

    /// Opens a connection; once more when the file at the path was moved or
    /// removed while opening (another construction's clean-up), which can
    /// fail the open with an I/O error: the second opens what is there now.
    fn connect(&self) -> Result<Conn, StoreError> {
        let open = || Conn::open(&self.path, &self.table, self.log.as_deref(), self.create_type, self.busy_timeout, &self.resource);
        let before = existing_file_id(&self.path);
        match open() {
            Err(_) if before.is_some() && existing_file_id(&self.path) != before => open(),
            other => other,
        }
    }

    fn wal_path(&self) -> PathBuf {
        beside(&self.path, "-wal")
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
                if !is_busy(&e) {
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

/// Whether some connection has the database at `path` open (SQLite keeps
/// the WAL and shared-memory files while one does, and removes them with
/// the last).
fn in_use(path: &Path) -> bool {
    beside(path, "-wal").exists() || beside(path, "-shm").exists()
}

/// Removes what the clean-up of a failed construction (see `drop`) left
/// when its process died between moving the new database aside and
/// removing it: `.duratom-removing-*.db` files in `dir` whose tables hold
/// no row. One that holds rows is kept: it may be another store's commit,
/// moved aside just before that process died, and only a person can tell
/// where it belongs.
fn remove_abandoned_removals(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(REMOVING_PREFIX) && name.ends_with(".db") && holds_no_row(&entry.path()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Opens the database file at `path` read-only as an immutable file (no
/// locks, WAL or shared memory), since it is not at its own path.
fn open_immutable(path: &Path) -> Option<Connection> {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(&uri, flags).ok()
}

/// Whether every table of the database file at `path` is empty.
fn holds_no_row(path: &Path) -> bool {
    let Some(db) = open_immutable(path) else { return false };
    let tables: Option<Vec<String>> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
        .ok();
    tables.is_some_and(|tables| {
        tables.iter().all(|t| {
            let sql = format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\""));
            db.query_row(&sql, [], |r| r.get::<_, i64>(0)).ok() == Some(0)
        })
    })
}

/// Whether the database file at `path` holds `tables` and nothing else,
/// with no row: what `open` made of a new file. Read as an immutable file
/// (no locks, WAL or shared memory), since it is not at its own path then.
fn holds_only_empty(path: &Path, tables: &[&str]) -> bool {
    let Some(db) = open_immutable(path) else { return false };
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).ok();
    count("SELECT count(*) FROM sqlite_master") == Some(tables.len() as i64)
        && tables.iter().all(|t| count(&format!("SELECT count(*) FROM {t}")) == Some(0))
}

/// The name a failed construction's database is moved to before removal.
const REMOVING_PREFIX: &str = ".duratom-removing-";

impl Drop for SqliteStore {
    /// Removes the database file `open` created when nothing was committed
    /// since (a construction that failed), leaving the path as the
    /// construction found it.
    ///
    /// Another process may open the path meanwhile. So the file is removed
    /// only when no connection has it open (closing left no WAL or
    /// shared-memory file), and it is first moved to a name of its own
    /// (atomic), then checked: still the file created, holding the table
    /// alone with no row, and still no connection at the path. Otherwise it
    /// is put back under its name. A connection that opened the file just
    /// before the move and commits into it learns that the file left its
    /// path: its commit reports an unknown outcome, never success.
    fn drop(&mut self) {
        let Some(created) = self.created.take() else { return };
        self.conn = None;
        if existing_file_id(&self.path) != Some(created) || in_use(&self.path) {
            return;
        }
        crate::store::before_created_file_removal();
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let moved = dir.join(format!("{REMOVING_PREFIX}{}-{nanos:09}.db", std::process::id()));
        if std::fs::rename(&self.path, &moved).is_err() {
            return;
        }
        let created_and_empty = existing_file_id(&moved) == Some(created) && holds_only_empty(&moved, &self.tables());
        if !created_and_empty || in_use(&self.path) {
            // Fails when a new database took the name meanwhile.
            let _ = std::fs::hard_link(&moved, &self.path);
        }
        let _ = std::fs::remove_file(&moved);
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        let table = self.table.clone();
        let log = self.log.clone();
        let records_name = self.records_name.clone();
        let resource = self.resource.clone();
        self.run("load", |c, id| {
            let Some(log) = log else {
                let bytes = read_row(&c.db, &table, id).map_err(|f| with_resource(f, &resource))?;
                if bytes.is_some() && log::has_records(&c.db, &records_name, id)? {
                    return Err(Failure::Other(StoreError::backend(
                        &resource,
                        "load",
                        format!(
                            "the row has change records written in log mode (`:log? true`) in table {records_name}, \
                             so it alone is not the state; open it in log mode (and `compact!` it to make the row the whole state)"
                        ),
                    )));
                }
                return Ok(bytes.map(|bytes| {
                    let version = Version::of_content(&bytes);
                    Stored { bytes, version }
                }));
            };
            // One read transaction: the row and its records as of one moment.
            let tx = c.db.transaction()?;
            let Some(base) = read_row(&tx, &table, id).map_err(|f| with_resource(f, &resource))? else { return Ok(None) };
            let records = log::records(&tx, &log, id)?;
            let mut version = Version::of_content(&base);
            for (seq, stored, record) in &records {
                version = log::follow(&version, record);
                if version != *stored {
                    return Err(Failure::Other(StoreError::Corrupt {
                        resource: resource.clone(),
                        detail: format!(
                            "change record {seq} in table {log} does not follow the row's value and the records before it \
                             (the row was written by something other than a log-mode duratom while it had records); \
                             the row and the records are left as they are. To take the row's value as the state, \
                             delete the row's records: DELETE FROM {log} WHERE id = {id}"
                        ),
                    }));
                }
            }
            Ok(Some(Stored { bytes: log::log_text(base, &records), version }))
        })
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        self.created = None;
        let table = self.table.clone();
        let log = self.log.clone();
        let records_name = self.records_name.clone();
        let resource = self.resource.clone();
        let version = Version::of_content(bytes);
        let busy_timeout = self.busy_timeout;
        let version = self.run("commit", |c, id| {
            let kind = c.value;
            // BEGIN IMMEDIATE takes the write lock at once: nobody writes
            // between the compare and the write.
            let tx =
                c.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = || stored_version(&tx, &table, log.as_deref(), id).map_err(|f| with_resource(f, &resource));
            match expect {
                Expect::Anything { .. } => {}
                Expect::Nothing => {
                    if stored()?.is_some() {
                        return Err(Failure::Conflict);
                    }
                }
                Expect::Version(expected) => {
                    if stored()?.as_ref() != Some(expected) {
                        return Err(Failure::Conflict);
                    }
                }
            }
            write_row(&tx, &table, kind, id, bytes).map_err(|f| with_resource(f, &resource))?;
            clear_records(&tx, log.as_deref(), &records_name, id)?;
            tx.commit()?;
            checkpoint(&c.db, busy_timeout, &resource)?;
            Ok(version.clone())
        })?;
        self.after_write("commit")?;
        Ok(version)
    }

    fn append(&mut self, record: &[u8], after: &Version) -> Result<Version, StoreError> {
        let Some(log) = self.log.clone() else {
            return Err(StoreError::backend(&self.resource, "appending", "the store is not in log mode"));
        };
        let record = std::str::from_utf8(record).map_err(|e| {
            StoreError::backend(&self.resource, "appending", format!("a change record must be UTF-8 text: {e}"))
        })?;
        self.created = None;
        let table = self.table.clone();
        let resource = self.resource.clone();
        let busy_timeout = self.busy_timeout;
        let version = log::follow(after, record.as_bytes());
        let version = self.run("append", |c, id| {
            let tx = c.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !row_present(&tx, &table, id)? {
                return Err(Failure::Conflict);
            }
            let (seq, stored) = match log::last(&tx, &log, id)? {
                Some((seq, v)) => (seq, v),
                None => match read_row(&tx, &table, id).map_err(|f| with_resource(f, &resource))? {
                    Some(base) => (0, Version::of_content(&base)),
                    None => return Err(Failure::Conflict),
                },
            };
            if stored != *after {
                return Err(Failure::Conflict);
            }
            log::insert(&tx, &log, id, seq + 1, &version, record)?;
            tx.commit()?;
            checkpoint(&c.db, busy_timeout, &resource)?;
            Ok(version.clone())
        })?;
        self.after_write("append")?;
        Ok(version)
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        self.created = None;
        let table = self.table.clone();
        let log = self.log.clone();
        let records_name = self.records_name.clone();
        self.run("delete", |c, id| {
            let tx = c.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])?;
            clear_records(&tx, log.as_deref(), &records_name, id)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// The version of what row `id` holds (`None`: nothing); in log mode
/// (`log`, the records table) that of its last record when it has any.
fn stored_version(db: &Connection, table: &str, log: Option<&str>, id: i64) -> Result<Option<Version>, Failure> {
    if let Some(log) = log {
        if !row_present(db, table, id)? {
            return Ok(None);
        }
        if let Some((_, v)) = log::last(db, log, id)? {
            return Ok(Some(v));
        }
    }
    Ok(read_row(db, table, id)?.map(|b| Version::of_content(&b)))
}

/// Removes row `id`'s records: from the records table `log` in log mode,
/// else from the one named `records_name` if it exists (a row written
/// whole outside log mode has no records after it).
fn clear_records(db: &Connection, log: Option<&str>, records_name: &str, id: i64) -> Result<(), Failure> {
    match log {
        Some(log) => log::clear(db, log, id),
        None if log::has_records(db, records_name, id)? => log::clear(db, &log::quoted(records_name), id),
        None => Ok(()),
    }
}

/// Whether row `id` holds a value. `typeof` reads the column's type from
/// the record header alone; `value IS NOT NULL` would read a large value's
/// every overflow page.
fn row_present(db: &Connection, table: &str, id: i64) -> Result<bool, Failure> {
    Ok(db
        .query_row(&format!("SELECT typeof(value) != 'null' FROM {table} WHERE id = ?1 LIMIT 1"), [id], |r| r.get(0))
        .optional()?
        .unwrap_or(false))
}

/// Copies the commit just made from the WAL into the database file and
/// fsyncs it, so that an acknowledged commit no longer depends on the WAL
/// file: removing it (`rm *-wal`) after the commit returned loses nothing,
/// even if the process dies before its next call.
///
/// Each try is PASSIVE: it neither waits nor holds the write lock, since a
/// checkpoint that waited would keep every other process's commit waiting
/// behind it (shared mode) until their busy timeouts failed them. A read
/// transaction of another connection (sqlite-jdbc in this JVM, another
/// process) on an older state keeps SQLite from copying the commit, so the
/// try is repeated with a growing pause until the WAL is copied up to where
/// it ended after the commit (or was restarted, which SQLite does only once
/// all of it is copied). A reader that holds on for longer than `bound` (the
/// busy timeout) fails the call as outcome unknown: the commit is in the
/// WAL, durable and visible, but not yet safe from the WAL's removal, so it
/// is not acknowledged.
fn checkpoint(db: &Connection, bound: Duration, resource: &Resource) -> Result<(), Failure> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    // Frames in the WAL after the commit, from the first try that ran.
    let mut end: Option<i64> = None;
    loop {
        let (busy, log, done): (i64, i64, i64) = db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| {
                Failure::Other(StoreError::outcome_unknown(
                    resource,
                    "commit",
                    format!("the commit is in the WAL, but copying it into the database file failed: {e}"),
                ))
            })?;
        if busy == 0 && log < 0 {
            return Ok(()); // not in WAL mode: the commit went into the file
        }
        if busy == 0 {
            let end = *end.get_or_insert(log);
            if done >= end || log < end {
                return Ok(());
            }
        }
        if start.elapsed() >= bound {
            return Err(Failure::Other(StoreError::outcome_unknown(
                resource,
                "commit",
                format!(
                    "the commit is in the WAL, but another connection's read transaction (or checkpoint) kept it from being copied into the database file for {} ms (busy-timeout-ms); until it is copied, removing the WAL file would lose it",
                    bound.as_millis()
                ),
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The table name as one quoted SQLite identifier. SQLite compares
/// identifiers without regard to ASCII case, quoted or not, so the table the
/// original library created under the same name (unquoted) is this one.
fn quote_table(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name.contains('\0') {
        return Err("contains a NUL character".into());
    }
    Ok(log::quoted(name))
}
