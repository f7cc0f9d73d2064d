//! Windows: the same operations through Win32. A replacing rename is
//! `MoveFileExW` with `MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH`
//! (the call returns once the rename is on disk, which is what the
//! directory fsync gives on Unix; Windows cannot fsync a directory);
//! locks are `LockFileEx` on one byte far past any data (Windows locks are
//! mandatory: a lock on the data would fail every other reader of a temp
//! file that has just been renamed over the target); file identity is
//! the volume serial number and file index of `GetFileInformationByHandle`.
//! Windows has no permission bits: a file's access comes from the ACL it
//! inherits, and only the read-only attribute maps to the bits here.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Brief;

/// The permission bits a new file gets when there is none to copy.
pub const DEFAULT_MODE: u32 = 0o666;

const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const MOVEFILE_REPLACE_EXISTING: u32 = 0x1;
const MOVEFILE_WRITE_THROUGH: u32 = 0x8;
const LOCKFILE_FAIL_IMMEDIATELY: u32 = 0x1;
const LOCKFILE_EXCLUSIVE_LOCK: u32 = 0x2;
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SHARING_VIOLATION: i32 = 32;
const ERROR_LOCK_VIOLATION: i32 = 33;
/// The byte every lock of this backend covers: past the end of any file it
/// stores, within the offsets every Windows file system (and Wine) takes.
const LOCK_OFFSET: u64 = 1 << 62;

/// OVERLAPPED, which carries the offset of a lock.
#[repr(C)]
struct Overlapped {
    internal: usize,
    internal_high: usize,
    offset: u32,
    offset_high: u32,
    event: *mut core::ffi::c_void,
}

#[repr(C)]
#[derive(Default)]
struct FileTime {
    low: u32,
    high: u32,
}

/// BY_HANDLE_FILE_INFORMATION.
#[repr(C)]
#[derive(Default)]
struct ByHandleFileInformation {
    attributes: u32,
    creation: FileTime,
    last_access: FileTime,
    last_write: FileTime,
    volume_serial_number: u32,
    size_high: u32,
    size_low: u32,
    links: u32,
    index_high: u32,
    index_low: u32,
}

#[link(name = "kernel32")]
extern "system" {
    fn GetFileInformationByHandle(file: *mut core::ffi::c_void, info: *mut ByHandleFileInformation) -> i32;
    fn MoveFileExW(existing: *const u16, new: *const u16, flags: u32) -> i32;
    fn LockFileEx(file: *mut core::ffi::c_void, flags: u32, reserved: u32, len_low: u32, len_high: u32, overlapped: *mut Overlapped) -> i32;
}

/// The path as a NUL-terminated UTF-16 string for the `W` calls: made
/// absolute and verbatim (`\\?\C:\...`, `\\?\UNC\...`), which the calls
/// take past the classic 260-character limit, as std does for its own calls.
fn wide(path: &Path) -> Vec<u16> {
    let full = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text: Vec<u16> = full.as_os_str().encode_wide().collect();
    let starts = |prefix: &str| text.starts_with(&prefix.encode_utf16().collect::<Vec<u16>>());
    let mut out: Vec<u16> = if starts(r"\\?\") || starts(r"\\.\") {
        text
    } else if let Some(rest) = text.strip_prefix(&r"\\".encode_utf16().collect::<Vec<u16>>()[..]) {
        r"\\?\UNC\".encode_utf16().chain(rest.iter().copied()).collect()
    } else if text.get(1) == Some(&(b':' as u16)) {
        r"\\?\".encode_utf16().chain(text).collect()
    } else {
        text
    };
    out.push(0);
    out
}

/// Makes `options` open `path` itself, never what a symbolic link or
/// junction there points to (`FILE_FLAG_OPEN_REPARSE_POINT`). Windows has no
/// FIFOs in the file system to block on.
pub fn no_follow_no_block(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
}

/// Windows has no permission bits to give a new file: it inherits the
/// directory's ACL. `set_permission_bits` maps the read-only case.
pub fn with_mode(options: &mut OpenOptions, _mode: u32) -> &mut OpenOptions {
    options
}

/// What `meta` describes when it is not a regular file; `None` for a
/// regular file.
pub fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("a special file")
    }
}

/// The permission bits of the file `meta` describes: 0o444 when it is
/// read-only, 0o666 otherwise.
pub fn permission_bits(meta: &Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o666
    }
}

/// Makes `file` read-only when `mode` allows no writing.
pub fn set_permission_bits(file: &File, mode: u32) -> io::Result<()> {
    let mut permissions = file.metadata()?.permissions();
    permissions.set_readonly(mode & 0o222 == 0);
    file.set_permissions(permissions)
}

/// The volume serial number and file index of the file `file` is open on:
/// what names one file on Windows (std's metadata does not carry them).
pub fn file_id(file: &File) -> io::Result<(u64, u64)> {
    let mut info = ByHandleFileInformation::default();
    // SAFETY: an open handle of ours and an information buffer of the right layout.
    if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((u64::from(info.volume_serial_number), u64::from(info.index_high) << 32 | u64::from(info.index_low)))
}

/// Whether `path` still names the file `file` is open on.
pub fn names_file(path: &Path, file: &File) -> bool {
    let Ok(named) = no_follow_no_block(OpenOptions::new().read(true)).open(path) else { return false };
    matches!((file_id(&named), file_id(file)), (Ok(a), Ok(b)) if a == b)
}

/// Whether the directory `dir` is open on, which was at `dir_path`, holds
/// an entry `name` that is the file `file` is open on: the directory at
/// `dir_path` is still that one, and its entry `name` is that file.
pub fn dir_holds(dir: &File, dir_path: &Path, name: &Path, file: &File) -> bool {
    let Some(name) = name.file_name() else { return false };
    let Ok(now) = open_dir(dir_path) else { return false };
    matches!((file_id(&now), file_id(dir)), (Ok(a), Ok(b)) if a == b) && names_file(&dir_path.join(name), file)
}

/// Opens a directory (a directory handle needs backup semantics), so that
/// `dir_holds` can tell it from another one at its path later.
pub fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(FILE_FLAG_BACKUP_SEMANTICS).open(dir)
}

/// Windows cannot flush a directory: `rename_over` writes through instead,
/// and a removal is in NTFS's journal when `remove_file` returns.
pub fn sync_dir(_dir: &File) -> io::Result<()> {
    Ok(())
}

/// How long a replacing rename waits for other processes to close the
/// target (a reader in the middle of a load holds it open for a moment).
const RENAME_PATIENCE: Duration = Duration::from_secs(5);

/// Renames `from` over `to` in one step (`MoveFileExW`, replacing `to`),
/// returning once the rename has reached the disk. Windows refuses that
/// rename while another handle has `to` open, even one that shares
/// deletion. Then std's rename is tried, which asks for POSIX semantics
/// (Windows 10 and later on NTFS: the open file keeps its content, the
/// name moves to the new one) and the new file is flushed; where that is
/// refused too, the rename is tried again until the target is closed, for
/// at most `RENAME_PATIENCE`. A read-only target is refused at once.
pub fn rename_over(from: &Path, to: &Path) -> io::Result<()> {
    let (from_w, to_w) = (wide(from), wide(to));
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: two NUL-terminated UTF-16 strings that live across the call.
        if unsafe { MoveFileExW(from_w.as_ptr(), to_w.as_ptr(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH) } != 0 {
            return Ok(());
        }
        let refused = io::Error::last_os_error();
        if !matches!(refused.raw_os_error(), Some(ERROR_ACCESS_DENIED | ERROR_SHARING_VIOLATION)) {
            return Err(refused);
        }
        if std::fs::rename(from, to).is_ok() {
            // Renamed: from here on nothing may fail. The flush stands in for
            // the write-through that this kind of rename cannot ask for.
            if let Ok(new) = OpenOptions::new().write(true).custom_flags(FILE_FLAG_OPEN_REPARSE_POINT).open(to) {
                let _ = new.sync_all();
            }
            return Ok(());
        }
        let read_only = std::fs::symlink_metadata(to).is_ok_and(|m| m.permissions().readonly());
        if read_only || started.elapsed() >= RENAME_PATIENCE {
            return Err(refused);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Opens `path` for taking its lock.
pub fn open_for_locking(path: &Path) -> io::Result<File> {
    no_follow_no_block(OpenOptions::new().write(true)).open(path)
}

/// The longest file name, in bytes of UTF-8: NTFS, ReFS and FAT32 take 255
/// UTF-16 units per name, and a name never has fewer UTF-8 bytes than
/// UTF-16 units, so a name within 255 bytes fits.
pub fn name_max(_dir: &Path) -> usize {
    255
}

/// Writes all of `bytes` at `offset` of `file`.
pub fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote no byte")),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The metadata of `path` itself (a symlink is not followed).
pub fn brief_of_path(path: &Path) -> io::Result<Brief> {
    std::fs::symlink_metadata(path).map(|m| Brief::of(&m))
}

/// The metadata of the file `file` is open on, and its identity (as
/// `file_id`).
pub fn brief_and_id_of_file(file: &File) -> io::Result<(Brief, (u64, u64))> {
    Ok((Brief::of(&file.metadata()?), file_id(file)?))
}

/// Reads the byte at `offset` of `file`: `None` past its end.
pub fn byte_at(file: &File, offset: u64) -> io::Result<Option<u8>> {
    use std::os::windows::fs::FileExt;
    let mut b = [0u8];
    let n = file.seek_read(&mut b, offset)?;
    Ok((n == 1).then_some(b[0]))
}

/// Space reserved ahead of appends (`fallocate` on Linux) has no
/// counterpart here that spares the append's metadata update: appends
/// extend the file as they go.
pub fn reserve(_file: &File, _from: u64, _len: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// `LockFileEx` on `LOCK_OFFSET` with `flags`.
fn lock_byte(file: &File, flags: u32) -> io::Result<()> {
    let mut overlapped = Overlapped {
        internal: 0,
        internal_high: 0,
        offset: LOCK_OFFSET as u32,
        offset_high: (LOCK_OFFSET >> 32) as u32,
        event: std::ptr::null_mut(),
    };
    // SAFETY: an open (synchronous) handle of ours and an OVERLAPPED that
    // lives across the call, which returns once the lock is taken or refused.
    if unsafe { LockFileEx(file.as_raw_handle(), flags | LOCKFILE_EXCLUSIVE_LOCK, 0, 1, 0, &mut overlapped) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes this backend's exclusive lock on `file`, waiting for it. Windows
/// releases it when the handle closes or its process dies.
pub fn lock(file: &File) -> io::Result<()> {
    lock_byte(file, 0)
}

/// Takes this backend's exclusive lock on `file` if no one holds it:
/// `Ok(false)` when someone does.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match lock_byte(file, LOCKFILE_FAIL_IMMEDIATELY) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION) => Ok(false),
        Err(e) => Err(e),
    }
}
