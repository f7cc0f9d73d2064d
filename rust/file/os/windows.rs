//! Windows: the same operations through Win32. A replacing rename is
//! `MoveFileExW` with `MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH`
//! (the call returns once the rename is on disk, which is what the
//! directory fsync gives on Unix; Windows cannot fsync a directory);
//! whole-file locks are `LockFileEx` (std's `File::lock`); file identity is
//! the volume serial number and file index of `GetFileInformationByHandle`.
//! Windows has no permission bits: a file's access comes from the ACL it
//! inherits, and only the read-only attribute maps to the bits here.

use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};

/// The permission bits a new file gets when there is none to copy.
pub const DEFAULT_MODE: u32 = 0o666;

const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const MOVEFILE_REPLACE_EXISTING: u32 = 0x1;
const MOVEFILE_WRITE_THROUGH: u32 = 0x8;
const FILE_NAME_NORMALIZED: u32 = 0x0;

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
    fn GetFinalPathNameByHandleW(file: *mut core::ffi::c_void, path: *mut u16, len: u32, flags: u32) -> u32;
}

/// The path as a NUL-terminated UTF-16 string, for the `W` calls (which
/// take long and non-ASCII paths as they are).
fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(std::iter::once(0)).collect()
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

/// Volume serial number and file index: what names one file on Windows.
fn identity(file: &File) -> Option<(u32, u32, u32)> {
    let mut info = ByHandleFileInformation::default();
    // SAFETY: an open handle of ours and an information buffer of the right layout.
    if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
        return None;
    }
    Some((info.volume_serial_number, info.index_high, info.index_low))
}

/// Whether `a` and `b` describe the same file. Std's metadata carries no
/// file index on Windows, so this answers false, which makes its callers
/// keep a file rather than risk removing another one.
pub fn same_file(_a: &Metadata, _b: &Metadata) -> bool {
    false
}

/// Whether `path` still names the file `file` is open on.
pub fn names_file(path: &Path, file: &File) -> bool {
    let Ok(named) = no_follow_no_block(OpenOptions::new().read(true)).open(path) else { return false };
    matches!((identity(&named), identity(file)), (Some(a), Some(b)) if a == b)
}

/// The path the open directory `dir` has now.
fn dir_path(dir: &File) -> Option<PathBuf> {
    let mut buf = vec![0u16; 512];
    loop {
        // SAFETY: an open handle of ours and a buffer of the length passed.
        let n = unsafe { GetFinalPathNameByHandleW(dir.as_raw_handle(), buf.as_mut_ptr(), buf.len() as u32, FILE_NAME_NORMALIZED) };
        if n == 0 {
            return None;
        }
        if (n as usize) < buf.len() {
            return Some(PathBuf::from(OsString::from_wide(&buf[..n as usize])));
        }
        buf.resize(n as usize + 1, 0);
    }
}

/// Whether the directory `dir` is open on holds an entry `name` that is the
/// file `file` is open on.
pub fn dir_holds(dir: &File, name: &Path, file: &File) -> bool {
    let (Some(dir), Some(name)) = (dir_path(dir), name.file_name()) else { return false };
    names_file(&dir.join(name), file)
}

/// Opens a directory (a directory handle needs backup semantics), so that
/// `dir_holds` can find it later, wherever it has moved by then.
pub fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(FILE_FLAG_BACKUP_SEMANTICS).open(dir)
}

/// Windows cannot flush a directory: `rename_over` writes through instead,
/// and a removal is in NTFS's journal when `remove_file` returns.
pub fn sync_dir(_dir: &File) -> io::Result<()> {
    Ok(())
}

/// Renames `from` over `to` in one step (`MoveFileExW`, replacing `to`),
/// returning once the rename has reached the disk.
pub fn rename_over(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (wide(from), wide(to));
    // SAFETY: two NUL-terminated UTF-16 strings that live across the call.
    if unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
