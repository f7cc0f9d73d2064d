//! What the client's errors mean for a store (a write that may have landed)
//! and how they read in a message: never with the URL, which holds the
//! password.

use redis::{ErrorKind, RedisError};

/// Why one attempt failed.
pub(super) enum Failure {
    /// `ambiguous`: the failure came while a write was sent, so it may have
    /// taken effect.
    Redis { error: RedisError, ambiguous: bool },
    Conflict,
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Self {
        Failure::Redis { error, ambiguous: false }
    }
}

/// A failure while a write was sent: it may have landed.
pub(super) fn ambiguous(error: RedisError) -> Failure {
    Failure::Redis { error, ambiguous: true }
}

/// A Redis error worded for people; never includes the URL (or its password).
pub(super) fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        return format!("no answer in time ({e})");
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => format!("authentication failed ({e})"),
        _ => e.to_string(),
    }
}

/// A URL parse error's kind and detail, which never quote the URL.
pub(super) fn kind_text(e: &RedisError) -> String {
    match e.detail() {
        Some(d) => format!("{:?}: {d}", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}
