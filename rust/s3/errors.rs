//! What the SDK's errors mean for a store (conflict, retry, unknown outcome)
//! and how they read in a message.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::store::{causes, error_chain, Expect};

pub(super) fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

/// Whether a refused PutObject means "the condition did not hold".
pub(super) fn is_conflict<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    expect: &Expect,
) -> bool {
    let code = match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    };
    match (status_of(err), expect) {
        (_, Expect::Anything { .. }) => false,
        (Some(412), _) => true,
        // Two conditional writes to one key raced; the other one won.
        (Some(409), _) => code == Some("ConditionalRequestConflict"),
        // If-Match on a key that no longer exists: the version we expect is gone.
        (Some(404), Expect::Version(_)) => code == Some("NoSuchKey"),
        _ => false,
    }
}

/// Whether a failed conditional PutObject may be tried again, and whether
/// the failed attempt may nonetheless have been stored.
pub(super) enum Retry {
    No,
    /// The request never reached the server, or the server says it did
    /// nothing (503 Slow Down).
    NotSent,
    /// A timeout, a connection lost after connecting, or a 5xx other than
    /// 503: the server may have stored the object.
    MaybeApplied,
}

pub(super) fn retry_kind<E: StdError + 'static>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Retry {
    match err {
        SdkError::DispatchFailure(_) if refused(err) => Retry::NotSent,
        SdkError::DispatchFailure(d) if d.is_user() => Retry::No,
        // Includes hyper's "connection closed before message completed": the
        // request may have been sent whole.
        SdkError::DispatchFailure(_) => Retry::MaybeApplied,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Retry::MaybeApplied,
        SdkError::ServiceError(s) => match s.raw().status().as_u16() {
            503 => Retry::NotSent,
            500 | 502 | 504 => Retry::MaybeApplied,
            _ => Retry::No,
        },
        _ => Retry::No,
    }
}

/// A one-line account of an SDK failure: the service's code and message, or
/// what went wrong on the way (refused, timed out, ...), then the chain of
/// causes. Credentials never appear in SDK errors.
pub(super) fn describe<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>, target: &str, timeout: Duration) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let context = error_chain(err);
    match err {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (s.err().code(), s.err().message()) {
                (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
                (Some(code), None) => format!("HTTP {status} {code}"),
                // HEAD responses have no body, hence no code: name the status.
                _ if status == 403 => "HTTP 403 access denied (wrong credentials, or not your bucket)".to_string(),
                _ if status == 301 => "HTTP 301: the bucket is in another region than the one configured".to_string(),
                _ => format!("HTTP {status}: {context}"),
            }
        }
        SdkError::TimeoutError(_) => {
            format!("timed out after {} ms (timeout-ms) waiting for {target}", timeout.as_millis())
        }
        SdkError::DispatchFailure(d) => {
            if refused(err) {
                format!("connection refused by {target} ({context})")
            } else if d.is_timeout() {
                format!("timed out connecting to {target} ({context})")
            } else if d.is_io() {
                format!("could not reach {target} ({context})")
            } else {
                format!("request to {target} failed ({context})")
            }
        }
        SdkError::ResponseError(_) => format!("unreadable response from {target} ({context})"),
        SdkError::ConstructionFailure(_) => format!("could not build the request ({context})"),
        _ => context,
    }
}

/// Whether the cause chain holds an OS "connection refused".
pub(super) fn refused(err: &(dyn StdError + 'static)) -> bool {
    causes(err)
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}
