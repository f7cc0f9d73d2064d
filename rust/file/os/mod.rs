//! Every call of the file backend whose meaning depends on the operating
//! system, behind one set of functions: opening without following a link,
//! file kinds and permission bits, file identity, whole-file locks, the
//! replacing rename and the fsync of a directory. The rest of the backend
//! calls only these, so a port to another system adds one file here.
//!
//! `unix.rs` serves Linux and macOS (`flock` for locks), `windows.rs`
//! Windows (`LockFileEx`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
