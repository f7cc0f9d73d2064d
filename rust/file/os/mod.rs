//! Every call of the file backend whose meaning depends on the operating
//! system, behind one set of functions: opening without following a link,
//! file kinds and permission bits, file identity, whole-file locks, the
//! replacing rename and the fsync of a directory. The rest of the backend
//! calls only these, so a port to another system adds one file here.
//!
//! `unix.rs` serves Linux and macOS, `windows.rs` Windows; the whole-file
//! locks below are std's on both (`flock` on Unix, `LockFileEx` on Windows).

use std::fs::{File, TryLockError};
use std::io;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(super) use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(super) use windows::*;

/// Takes the exclusive lock on the whole of `file`, waiting for it. The OS
/// releases it when the descriptor (handle) closes or its process dies.
pub fn lock(file: &File) -> io::Result<()> {
    file.lock()
}

/// Takes the exclusive lock on `file` if no one holds it: `Ok(false)` when
/// someone does.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}
