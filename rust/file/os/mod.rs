//! Every call of the file backend whose meaning depends on the operating
//! system, behind one set of functions: opening without following a link,
//! file kinds and permission bits, file identity, whole-file locks, the
//! replacing rename and the fsync of a directory. The rest of the backend
//! calls only these, so a port to another system adds one file here.
//!
//! `unix.rs` serves Linux and macOS (`flock` for locks), `windows.rs`
//! Windows (`LockFileEx`).

/// What the backend reads of a file's metadata: never its times. Linux
/// (6.13 on) gives a file whose times were read fine-grained new ones at its
/// next write, an inode update that slows the `fdatasync` after every
/// log-mode append; on Linux `brief_of_path` and `brief_and_id_of_file` ask for
/// these fields alone.
pub(crate) struct Brief {
    pub symlink: bool,
    /// `None` for a regular file (and a symlink), else what it is ("a FIFO", ...).
    pub special: Option<&'static str>,
    /// Permission bits.
    pub mode: u32,
    pub len: u64,
}

impl Brief {
    fn of(meta: &std::fs::Metadata) -> Brief {
        let symlink = meta.file_type().is_symlink();
        Brief { symlink, special: if symlink { None } else { special_kind(meta) }, mode: permission_bits(meta), len: meta.len() }
    }
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
