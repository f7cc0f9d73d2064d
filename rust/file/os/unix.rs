//! Linux and macOS: POSIX calls, `flock` for whole-file locks.

use std::fs::{self, File, Metadata, OpenOptions, Permissions, TryLockError};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::Brief;

/// The permission bits a new file gets when there is none to copy.
pub const DEFAULT_MODE: u32 = 0o666;

/// Makes `options` open `path` itself, never what a symlink there points to
/// (`O_NOFOLLOW`), and never block (`O_NONBLOCK`): were a regular file
/// swapped for a link or a FIFO after it was examined, the open fails
/// instead of following or blocking.
pub fn no_follow_no_block(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
}

/// Makes `options` create a new file with permission bits `mode` (less the
/// umask).
pub fn with_mode(options: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    options.mode(mode)
}

/// What `meta` describes when it is not a regular file ("a FIFO", "a
/// directory", ...); `None` for a regular file.
pub fn special_kind(meta: &Metadata) -> Option<&'static str> {
    kind_of_mode(meta.mode())
}

/// What a file whose `st_mode` is `mode` is, when not a regular file.
fn kind_of_mode(mode: u32) -> Option<&'static str> {
    Some(match mode & libc::S_IFMT as u32 {
        m if m == libc::S_IFREG as u32 => return None,
        m if m == libc::S_IFDIR as u32 => "a directory",
        m if m == libc::S_IFIFO as u32 => "a FIFO",
        m if m == libc::S_IFCHR as u32 => "a character device",
        m if m == libc::S_IFBLK as u32 => "a block device",
        m if m == libc::S_IFSOCK as u32 => "a socket",
        _ => "a special file",
    })
}

/// The metadata of `path` itself (a symlink is not followed).
pub fn brief_of_path(path: &Path) -> io::Result<Brief> {
    #[cfg(target_os = "linux")]
    {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if let Some(s) = statx(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW, 0)? {
            return Ok(brief_of_statx(&s));
        }
    }
    fs::symlink_metadata(path).map(|m| Brief::of(&m))
}

/// The metadata of the file `file` is open on, and its identity (as
/// `file_id`), read at once.
pub fn brief_and_id_of_file(file: &File) -> io::Result<(Brief, (u64, u64))> {
    #[cfg(target_os = "linux")]
    if let Some(s) = statx(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_INO)? {
        return Ok((brief_of_statx(&s), (libc::makedev(s.stx_dev_major, s.stx_dev_minor), s.stx_ino)));
    }
    file.metadata().map(|m| (Brief::of(&m), (m.dev(), m.ino())))
}

/// `statx` asked for type, mode and size, or (with `STATX_INO` in `more`)
/// the identity: `None` where the kernel has no statx (before 4.11, or
/// refused by a sandbox), so that the caller falls back on `stat`.
#[cfg(target_os = "linux")]
fn statx(dirfd: libc::c_int, path: &std::ffi::CStr, flags: libc::c_int, more: libc::c_uint) -> io::Result<Option<libc::statx>> {
    let mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_SIZE | more;
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path and a statx buffer of ours. The raw
    // syscall, not glibc's wrapper, which needs a newer glibc than the
    // library may link against.
    let r = unsafe { libc::syscall(libc::SYS_statx, dirfd, path.as_ptr(), flags, mask, buf.as_mut_ptr()) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel filled it in.
    let buf = unsafe { buf.assume_init() };
    Ok((buf.stx_mask & mask == mask).then_some(buf))
}

#[cfg(target_os = "linux")]
fn brief_of_statx(s: &libc::statx) -> Brief {
    let mode = u32::from(s.stx_mode);
    let symlink = mode & libc::S_IFMT as u32 == libc::S_IFLNK as u32;
    Brief { symlink, special: if symlink { None } else { kind_of_mode(mode) }, mode: mode & 0o777, len: s.stx_size }
}

/// The permission bits of the file `meta` describes.
pub fn permission_bits(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o777
}

/// Gives `file` exactly the permission bits `mode`.
pub fn set_permission_bits(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode))
}

/// Whether `path` still names the file `file` is open on.
pub fn names_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether the directory `dir` is open on (found at `_dir_path`) holds an
/// entry `name` that is the file `file` is open on, wherever that directory
/// is now.
pub fn dir_holds(dir: &File, _dir_path: &Path, name: &Path, file: &File) -> bool {
    let Some(name) = name.file_name().and_then(|n| std::ffi::CString::new(n.as_bytes()).ok()) else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name and a stat buffer of ours.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return false;
    }
    // dev_t is i32 on macOS (u64 on Linux); std's dev() widens it with `as`
    // too, so the same cast keeps both sides equal on every target.
    #[allow(clippy::unnecessary_cast)]
    let same = |m: Metadata| m.dev() == st.st_dev as u64 && m.ino() == st.st_ino as u64;
    file.metadata().is_ok_and(same)
}

/// Opens a directory so that `sync_dir` can fsync it later, wherever it
/// has moved by then.
pub fn open_dir(dir: &Path) -> io::Result<File> {
    File::open(dir)
}

/// Fsyncs a directory, making the renames and removals in it durable.
pub fn sync_dir(dir: &File) -> io::Result<()> {
    dir.sync_all()
}

/// Renames `from` over `to` in one atomic step: at every moment `to` names
/// either the old file or the new one.
pub fn rename_over(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// Opens `path` for taking its lock: flock over NFS is emulated with locks
/// that need write access.
pub fn open_for_locking(path: &Path) -> io::Result<File> {
    no_follow_no_block(OpenOptions::new().write(true)).open(path)
}

/// The longest file name the file system holding `dir` takes, in bytes
/// (255 when it does not say).
pub fn name_max(dir: &Path) -> usize {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 255 };
    // SAFETY: a NUL-terminated path; pathconf only reads it.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 { n as usize } else { 255 }
}

/// Writes all of `bytes` at `offset` of `file`.
pub fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Reads the byte at `offset` of `file`: `None` past its end.
pub fn byte_at(file: &File, offset: u64) -> io::Result<Option<u8>> {
    let mut b = [0u8];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut b, offset)?;
    Ok((n == 1).then_some(b[0]))
}

/// Gives `file` `len` more bytes of allocated space from `from` (its end),
/// reading as zeros. Appends into such space leave the file's length and
/// allocation as they are, so the `fdatasync` after one has less metadata to
/// write. Linux only (`fallocate`); elsewhere, and on file systems without
/// it, an error, and appends extend the file as they go.
pub fn reserve(file: &File, from: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (Ok(from), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: an open fd of ours; mode 0 only allocates and extends.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, from, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, from, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The device and inode of the file `file` is open on.
pub fn file_id(file: &File) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    if let Some(s) = statx(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_INO)? {
        return Ok((libc::makedev(s.stx_dev_major, s.stx_dev_minor), s.stx_ino));
    }
    file.metadata().map(|m| (m.dev(), m.ino()))
}

/// Takes the exclusive lock on the whole of `file` (`flock`), waiting for
/// it. The OS releases it when the descriptor closes or its process dies.
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
