//! The one contract every backend implements, and the error type they share.
//!
//! A store holds one value as bytes. Every stored state carries a version token
//! (file: a counter in the header line, or a SHA-256 of the bytes for a custom
//! `:rw` encoding; PostgreSQL: the row's `xmin` system column; S3: the ETag;
//! SQLite: a SHA-256 of the stored bytes, in log mode chained through its
//! change records; Redis: a SHA-1 of them), so "write
//! only if nobody wrote since I read" is one call everywhere.
//!
//! The version a writer last saw is recorded once, by the caller (the JVM
//! engine), and handed to every commit; stores keep no copy of it.

use std::fmt;

/// An opaque token naming one stored state. Only equality means anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

impl Version {
    /// The version of a state that is its content: `sha256:` and the hex
    /// digest of `bytes`. For stores that keep nothing beside the bytes.
    pub fn of_content(bytes: &[u8]) -> Version {
        use sha2::{Digest, Sha256};
        let mut hex = String::with_capacity(71);
        hex.push_str("sha256:");
        for b in Sha256::digest(bytes).iter() {
            hex.push_str(&format!("{b:02x}"));
        }
        Version(hex)
    }
}

/// What a load finds: the stored bytes and the version they were stored as.
#[derive(Debug)]
pub struct Stored {
    pub bytes: Vec<u8>,
    pub version: Version,
}

/// The condition a commit is made under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is stored now. `after` is the version the writer last
    /// saw (`None`: it saw nothing stored); a store that numbers its states
    /// (the file header's counter) numbers this one after it.
    Anything { after: Option<Version> },
    /// Write only if nothing is stored (create).
    Nothing,
    /// Write only if the stored state still has this version.
    Version(Version),
}

/// Durable storage for one value.
///
/// Methods take `&mut self`: the JNI layer serialises calls per store, so a
/// backend may keep a connection or a cached version without locking.
pub trait Store: Send {
    /// What storage holds now, or `None` when nothing is stored.
    fn load(&mut self) -> Result<Option<Stored>, StoreError>;

    /// Durably replace the stored bytes if `expect` holds, returning the new
    /// version. When it does not hold: `Err(StoreError::Conflict)`, nothing written.
    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError>;

    /// Durably append one change record (log mode) to the state stored as
    /// `after`, returning the new version. When the stored version is not
    /// `after`: `Err(StoreError::Conflict)`, nothing written. Backends
    /// without a log mode refuse.
    fn append(&mut self, record: &[u8], after: &Version) -> Result<Version, StoreError> {
        let _ = (record, after);
        Err(StoreError::backend(self.resource(), "appending", "this backend has no log mode"))
    }

    /// Remove the stored value. Removing what is not there is not an error.
    fn delete(&mut self) -> Result<(), StoreError>;

    /// The backend and resource, as error messages name them
    /// (e.g. `local-file /var/app/state.edn`).
    fn resource(&self) -> &Resource;
}

/// Names what a store stands for, for error messages.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The constructor keyword: `local-file`, `postgres-db`, `aws-s3`,
    /// `sqlite-db` or `redis-db`.
    pub backend: &'static str,
    /// What the backend names it by: the path, the table and row, the
    /// `bucket/key`, ...
    pub name: String,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.backend, self.name)
    }
}

/// Every failure of the storage engine. Each carries the resource it concerns
/// so that the message a JVM user sees says what failed where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration handed over from the JVM cannot be used.
    #[error("{backend}: invalid configuration: {detail}")]
    Config { backend: String, detail: String },

    /// An operating-system I/O call failed.
    #[error("{resource}: {op} failed: {source}")]
    Io {
        resource: Resource,
        op: String,
        #[source]
        source: std::io::Error,
    },

    /// What is stored cannot be trusted (checksum, length or header wrong).
    #[error("{resource}: stored data is damaged and was left untouched: {detail}")]
    Corrupt { resource: Resource, detail: String },

    /// A conditional commit found another version stored.
    #[error("{resource}: conflict: the stored version changed since it was read")]
    Conflict { resource: Resource },

    /// A write was sent and no answer came (timeout, connection lost): it
    /// may or may not have taken effect. Reading storage tells which.
    #[error("{resource}: {op}: outcome unknown, the write may or may not have taken effect: {detail}")]
    OutcomeUnknown { resource: Resource, op: String, detail: String },

    /// The backend's server or client library reported an error.
    #[error("{resource}: {op} failed: {detail}")]
    Backend { resource: Resource, op: String, detail: String },

    /// The handle does not name an open store (never opened, or closed).
    #[error("no open duratom store has handle {0} (it was closed, destroyed or never opened)")]
    UnknownHandle(i64),
}

impl StoreError {
    pub fn io(resource: &Resource, op: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { resource: resource.clone(), op: op.into(), source }
    }

    pub fn backend(resource: &Resource, op: impl Into<String>, detail: impl fmt::Display) -> Self {
        StoreError::Backend { resource: resource.clone(), op: op.into(), detail: detail.to_string() }
    }

    pub fn outcome_unknown(resource: &Resource, op: impl Into<String>, detail: impl fmt::Display) -> Self {
        StoreError::OutcomeUnknown { resource: resource.clone(), op: op.into(), detail: detail.to_string() }
    }

    pub fn config(backend: &str, detail: impl Into<String>) -> Self {
        StoreError::Config { backend: backend.to_string(), detail: detail.into() }
    }
}

/// An error and the chain of its causes, outermost first.
pub fn causes<'a>(err: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// An error and its causes as one line, `outer: inner: ...`, for messages
/// meant for people. Client libraries' wrappers often repeat their cause's
/// text in their own; a cause already said is left out. Every backend words
/// its client's errors through this.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in causes(err) {
        let part = cause.to_string();
        let part = part.trim_end_matches(':');
        if text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn error_chain_says_each_cause_once() {
        let inner = Wrap("connection refused", None);
        let middle = Wrap("io error: connection refused", Some(Box::new(inner)));
        let outer = Wrap("dispatch failure", Some(Box::new(middle)));
        assert_eq!(error_chain(&outer), "dispatch failure: io error: connection refused");
        assert_eq!(causes(&outer).count(), 3);
        assert_eq!(error_chain(&Wrap("alone", None)), "alone");
    }
}

/// Runs in a failed construction's clean-up (file and SQLite stores),
/// between its check that the path still holds the file it created and the
/// removal. Tests put another writer there; elsewhere it does nothing.
#[cfg(not(test))]
pub(crate) fn before_created_file_removal() {}

#[cfg(test)]
thread_local! {
    pub(crate) static BEFORE_REMOVAL: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
pub(crate) fn before_created_file_removal() {
    if let Some(f) = BEFORE_REMOVAL.with(|f| f.borrow_mut().take()) {
        f()
    }
}
