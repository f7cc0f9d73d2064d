//! Opening the database: a connection in WAL mode with FULL sync, the
//! table found or created, and the identities of the files it opened, so
//! that the store notices a database or WAL file removed or replaced under it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::errors::{describe, is_busy};
use crate::store::{Resource, StoreError};

/// How values are bound: the declared type of the table's `value` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ValueKind {
    Text,
    Blob,
}

/// The identity of a file (device, inode), to notice a removed or replaced database.
pub(super) type FileId = (u64, u64);

/// An open database: the connection, the kind of its table's `value`
/// column, and the identities of its files when it was opened.
pub(super) struct Conn {
    pub(super) db: Connection,
    pub(super) value: ValueKind,
    pub(super) file: Option<FileId>,
    /// The WAL file this connection writes, as found at its path on open.
    pub(super) wal: Option<FileId>,
}

impl Conn {
    /// Opens the database at `path`, sets WAL and FULL sync, and finds the
    /// table (`table`, a quoted identifier) or creates it with a `value`
    /// column of `create_type`; in log mode also the records table `log`.
    /// Errors name `resource`.
    pub(super) fn open(
        path: &Path,
        table: &str,
        log: Option<&str>,
        create_type: ValueKind,
        busy_timeout: Duration,
        resource: &Resource,
    ) -> Result<Conn, StoreError> {
        super::locks::install();
        let error = |op: &str, e: rusqlite::Error| StoreError::backend(resource, op, describe(&e, busy_timeout));
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(StoreError::backend(
                resource,
                "open",
                format!("the directory {} does not exist", dir.display()),
            ));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db =
            Connection::open_with_flags(path, flags).map_err(|e| error("open", e))?;
        db.busy_timeout(busy_timeout)
            .map_err(|e| error("open", e))?;
        let mode = set_wal_mode(&db, busy_timeout).map_err(|e| error("setting WAL mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::backend(
                resource,
                "open",
                format!("the database cannot use WAL mode (it reports journal_mode {mode}), so commits could not be made durable"),
            ));
        }
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| error("open", e))?;
        let value = match value_column(&db, table, resource, busy_timeout)? {
            Some(kind) => kind,
            None => {
                let ty = match create_type {
                    ValueKind::Text => "TEXT",
                    ValueKind::Blob => "BLOB",
                };
                db.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (id INTEGER, value {ty})"
                ))
                .map_err(|e| error("creating the table", e))?;
                value_column(&db, table, resource, busy_timeout)?.ok_or_else(|| {
                    StoreError::backend(
                        resource,
                        "open",
                        "the table is missing after creating it",
                    )
                })?
            }
        };
        if let Some(log) = log {
            if !super::log::create(&db, log).map_err(|e| error("creating the records table", e))? {
                return Err(StoreError::backend(
                    resource,
                    "open",
                    format!("the table {log} exists but has no `id`, `seq`, `version` and `record` columns, so it cannot hold log mode's change records"),
                ));
            }
        }
        // A file removed while it was being opened would take this
        // connection's commits with it, unseen by any later identity check.
        let file = file_id(path);
        if file.is_some() && existing_file_id(path).is_none() {
            return Err(StoreError::backend(
                resource,
                "open",
                format!("the database file {} was removed while it was being opened", path.display()),
            ));
        }
        // The first read above opened (or created) the WAL.
        Ok(Conn {
            db,
            value,
            file,
            wal: existing_file_id(&beside(path, "-wal")),
        })
    }
}

/// Switches the database to WAL mode; returns the journal mode it reports.
///
/// The switch of a new database needs its exclusive lock, and SQLite does
/// not wait for it when another connection is switching at the same moment
/// (each holds the shared lock the other needs gone: waiting could never
/// end), so it fails at once. Connections opening one new database together
/// (processes started at once, in shared mode) therefore try again, with a
/// growing pause, for up to the busy timeout; by then one of them has
/// switched it, and the others find it in WAL mode.
fn set_wal_mode(db: &Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(e) if is_busy(&e) && start.elapsed() < busy_timeout => {
                std::thread::sleep(pause.min(busy_timeout.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The kind of the table's `value` column; `None` when there is no table.
/// A table without `id` and `value` columns is not one of ours: an error.
fn value_column(
db: &Connection,
table: &str,
resource: &Resource,
busy_timeout: Duration,
) -> Result<Option<ValueKind>, StoreError> {
    let read = || -> Result<Vec<(String, String)>, rusqlite::Error> {
        let mut stmt = db.prepare(&format!("PRAGMA table_info({table})"))?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        rows.collect()
    };
    let columns = read().map_err(|e| {
    StoreError::backend(resource, "reading the table's columns", describe(&e, busy_timeout))
})?;
    if columns.is_empty() {
        return Ok(None);
    }
    let find = |name: &str| columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
    match (find("id"), find("value")) {
        (Some(_), Some((_, ty))) => {
            Ok(Some(if ty.to_ascii_uppercase().contains("BLOB") { ValueKind::Blob } else { ValueKind::Text }))
        }
        _ => Err(StoreError::backend(
            resource,
            "open",
            "the table exists but has no `id` and `value` columns, so it is not a duratom table",
        )),
    }
}

/// The path of the database's companion file with `suffix` (`-wal`, `-shm`).
pub(super) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    // Missing file: a sentinel that never equals a real identity, so a
    // connection to a removed file counts as stale.
    Some(
        std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((u64::MAX, u64::MAX)),
    )
}

/// On Windows: the volume serial number and file index, read through a
/// handle opened for the purpose (it shares reading, writing and deleting,
/// so it never stands in SQLite's way).
#[cfg(windows)]
pub(super) fn file_id(path: &Path) -> Option<FileId> {
    Some(
        std::fs::File::open(path)
            .and_then(|f| crate::file::os::file_id(&f))
            .unwrap_or((u64::MAX, u64::MAX)),
    )
}

#[cfg(not(any(unix, windows)))]
pub(super) fn file_id(_path: &Path) -> Option<FileId> {
    None
}

/// The identity of the file at `path`; `None` when there is none (or no
/// identities on this platform).
pub(super) fn existing_file_id(path: &Path) -> Option<FileId> {
    if path.exists() {
        file_id(path)
    } else {
        None
    }
}
