//! Log mode: a state's change records in a table beside the user's table,
//! so that a commit inserts what changed instead of rewriting the row.
//!
//! The records table is named after the user's table with `_duratom_log`
//! appended, and holds `(id, seq, version, record)`: the row id the record
//! belongs to, its position (1, 2, ... after the row's value), the version
//! of the state it makes, and the record (EDN text, see duratom.log). A
//! full commit writes the row and removes that row's records in the same
//! transaction; an append inserts one record in the transaction that checks
//! the version, so the row and its records always change together.
//!
//! Versions: a row without records has the version of its content (a
//! SHA-256 of the bytes, as outside log mode), so a compacted row reads the
//! same either way. Each record's version is a SHA-256 of the version it
//! follows and its text: equal versions name equal histories from equal
//! bases, and finding the stored version reads one record, not the row.

use rusqlite::{Connection, OptionalExtension};

use super::errors::Failure;
use crate::store::Version;

/// The name of the records table of the table named `name`, unquoted.
pub(super) fn records_name(name: &str) -> String {
    format!("{name}_duratom_log")
}

/// `name` as a quoted SQL identifier.
pub(super) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether row `id` has records in the records table named `name`
/// (unquoted), which need not exist: what a store outside log mode checks,
/// so that it neither reads a row with records as the whole state nor
/// leaves records behind a row it replaces.
pub(super) fn has_records(db: &Connection, name: &str, id: i64) -> Result<bool, Failure> {
    let exists: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [name],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(false);
    }
    Ok(last(db, &quoted(name), id)?.is_some())
}

/// Creates the records table `log` when it is missing. `Ok(false)` when a
/// table of that name exists without the records table's columns.
pub(super) fn create(db: &Connection, log: &str) -> rusqlite::Result<bool> {
    db.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {log} (id INTEGER NOT NULL, seq INTEGER NOT NULL, \
         version TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (id, seq)) WITHOUT ROWID"
    ))?;
    let mut q = db.prepare(&format!("PRAGMA table_info({log})"))?;
    let columns = q.query_map([], |r| r.get::<_, String>(1))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(["id", "seq", "version", "record"].iter().all(|c| columns.iter().any(|n| n.eq_ignore_ascii_case(c))))
}

/// The version of the state made by appending `record` to the state stored as `after`.
pub(super) fn follow(after: &Version, record: &[u8]) -> Version {
    let mut bytes = Vec::with_capacity(after.0.len() + 1 + record.len());
    bytes.extend_from_slice(after.0.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(record);
    Version::of_content(&bytes)
}

/// The position and version of row `id`'s last record, if it has any.
pub(super) fn last(db: &Connection, log: &str, id: i64) -> Result<Option<(i64, Version)>, Failure> {
    Ok(db
        .query_row(
            &format!("SELECT seq, version FROM {log} WHERE id = ?1 ORDER BY seq DESC LIMIT 1"),
            [id],
            |r| Ok((r.get(0)?, Version(r.get(1)?))),
        )
        .optional()?)
}

/// Stores `record` as row `id`'s record at position `seq`, making `version`.
pub(super) fn insert(db: &Connection, log: &str, id: i64, seq: i64, version: &Version, record: &str) -> Result<(), Failure> {
    db.execute(
        &format!("INSERT INTO {log} (id, seq, version, record) VALUES (?1, ?2, ?3, ?4)"),
        rusqlite::params![id, seq, version.0, record],
    )?;
    Ok(())
}

/// Row `id`'s records in order: position, version and text.
pub(super) fn records(db: &Connection, log: &str, id: i64) -> Result<Vec<(i64, Version, Vec<u8>)>, Failure> {
    let mut q = db.prepare(&format!("SELECT seq, version, record FROM {log} WHERE id = ?1 ORDER BY seq"))?;
    let rows = q.query_map([id], |r| Ok((r.get(0)?, Version(r.get(1)?), r.get::<_, String>(2)?.into_bytes())))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes row `id`'s records.
pub(super) fn clear(db: &Connection, log: &str, id: i64) -> Result<(), Failure> {
    db.execute(&format!("DELETE FROM {log} WHERE id = ?1"), [id])?;
    Ok(())
}

/// The state as one text for duratom.log's `replay`: the row's value, then
/// each record after a comment line naming it, as the file store presents
/// its base and records.
pub(super) fn log_text(base: Vec<u8>, records: &[(i64, Version, Vec<u8>)]) -> Vec<u8> {
    let mut text = base;
    for (seq, _, record) in records {
        text.extend_from_slice(format!("\n;duratom/r version={seq} length={}\n", record.len()).as_bytes());
        text.extend_from_slice(record);
    }
    if !records.is_empty() {
        text.push(b'\n');
    }
    text
}
