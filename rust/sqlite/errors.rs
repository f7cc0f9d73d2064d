//! What SQLite's errors mean for a store (a conflict, a lock held elsewhere)
//! and how they read in a message.

use std::time::Duration;

use rusqlite::ErrorCode;

use crate::store::{Resource, StoreError};

/// Why a call failed: the store's error, or a conflict.
pub(super) enum Failure {
    Sql(rusqlite::Error),
    Conflict,
    Other(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// Puts the store's resource into an error made where it was not at hand.
pub(super) fn with_resource(f: Failure, resource: &Resource) -> Failure {
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

pub(super) fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(err, _) => Some(err.code),
        _ => None,
    }
}

/// Whether `e` says another connection holds a lock this call needed.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(code(e), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// A rusqlite error worded for people: a lock held elsewhere says so.
pub(super) fn describe(e: &rusqlite::Error, busy: Duration) -> String {
    match code(e) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "the database is locked by another connection (waited {} ms): {e}",
            busy.as_millis()
        ),
        Some(ErrorCode::CannotOpen) => format!("cannot open the database file: {e}"),
        _ => e.to_string(),
    }
}
