//! What the client's errors mean for a store (conflict, lost connection,
//! stale statements) and how they read in a message.

use std::io;

use postgres::error::DbError;

use crate::store::{causes, error_chain};

/// Why one attempt of an operation failed.
pub(super) enum Failure {
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

/// A failure while committing: the write may have landed.
pub(super) fn ambiguous(error: postgres::Error) -> Failure {
    Failure::Pg { error, ambiguous: true }
}

/// The SQLSTATE code of a server error, if it is one.
pub(super) fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Whether the error means the connection is unusable: closed, an I/O
/// failure, a connection-class SQLSTATE (08xxx), or the server shutting the
/// session down (57P01 admin shutdown, 57P02 crash, 57P03 not accepting yet).
pub(super) fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = sqlstate(e) {
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    find_io(e).is_some()
}

/// Whether the prepared statements no longer fit the table (dropped,
/// recreated with other columns): a new connection prepares them again, and
/// creates the table if it is gone.
pub(super) fn stale_statements(e: &postgres::Error) -> bool {
    matches!(sqlstate(e), Some("42P01" | "42703" | "0A000"))
}

/// An error as a person needs to read it: for a server error its own message
/// (the client's Display says only "db error"), else the whole cause chain.
pub(super) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db(db);
    }
    error_chain(e)
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

/// The first I/O error in the error's chain of causes.
pub(super) fn find_io(e: &postgres::Error) -> Option<&io::Error> {
    causes(e).find_map(|c| c.downcast_ref::<io::Error>())
}
