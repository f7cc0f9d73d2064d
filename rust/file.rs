//! The local-file backend.
//!
//! A commit is crash-durable: the new state goes to a temp file in the
//! directory of the file it replaces, which is fsynced, renamed over that
//! file, and then the directory is fsynced. Whenever the process or machine
//! dies, the file holds either the previous or the new complete state.
//!
//! The backend owns only what it wrote:
//! - A symlinked path (or a chain of links) is written through: the bytes go
//!   to the chain's final target, the temp file sits beside that target (so
//!   the rename stays atomic) and the link stays a link. The chain is followed
//!   at every operation, so a link pointed elsewhere is followed there.
//! - A path (or link target) that is a FIFO, device, socket or directory is
//!   refused, and never opened: opening a FIFO would block, and replacing a
//!   device would destroy it.
//! - Temp files are named `.<name>.<pid>-<store>-<n>-<random>.tmp` and their
//!   writer holds an `flock` on each while it writes. Clean-up at open
//!   removes only temp files whose lock it can take: their writer closed them
//!   or died (the OS releases a dead process's locks). A pid proves nothing,
//!   since pids are reused.
//!
//! EDN files start with one comment line that EDN readers skip:
//!
//! ```text
//! ;duratom/v2 version=7 length=1234 crc32=0a1b2c3d
//! {:the "value"}
//! ```
//!
//! `version` counts commits and is the store's version token (the next
//! commit numbers its state after the version the caller last saw: the
//! store keeps no count of its own); `length` is the body's size. `crc32` covers the header's own `version=.. length=..` text
//! and then the body, so a damaged count or length is caught as well as a
//! damaged value. Files without the line (written by the original library,
//! or by hand) load as version 0. A first line one byte away from a tag,
//! or a file that is a cut-off piece of a tag, is a damaged header rather
//! than plain EDN. With `:raw true` (a custom `:rw` encoding such as nippy) no
//! header is written, since the user's reader expects the file as it wrote it;
//! the version of such a file is a SHA-256 of its bytes.
//!
//! Files that earlier builds wrote with a `;duratom/v1` line (same layout,
//! but its `crc32` covers only the body) still load, so a user's state
//! survives the upgrade; the next commit writes v2. A v1 line is read as
//! strictly as v1 allows: exactly as the v1 writer wrote it, length and
//! body checksum checked. Only a digit of its `version` changed into another
//! digit goes unseen, since v1 checksummed no number; the value is still
//! exactly the stored one.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, Metadata, OpenOptions, Permissions, TryLockError};
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

/// The tag of the header line we write.
const HEADER_TAG: &[u8] = b";duratom/v2 ";
/// The tag earlier builds wrote: still read, never written.
const HEADER_TAG_V1: &[u8] = b";duratom/v1 ";
/// Longer than any header we write (two u64 numbers and the checksum).
const HEADER_MAX: usize = 128;
/// Links followed before giving up, as Linux's own limit.
const MAX_LINKS: usize = 40;

/// Numbers the stores of this process, for temp-file names.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// The keys a file store is configured with (made by
/// `clojure/duratom/backend/file.clj`); any other key is an error at open.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The file. Its parent directory must exist.
    path: String,
    /// A custom `:rw` encoding: the bytes are stored without the header line.
    #[serde(default)]
    raw: bool,
}

pub struct FileStore {
    resource: Resource,
    /// The path as configured; it may be a symlink.
    path: PathBuf,
    /// No header line: the bytes are a custom encoding, stored as given.
    raw: bool,
    /// Unique among this process's stores; part of every temp-file name.
    store_id: u64,
    /// Makes temp-file names unique within this store.
    temp_counter: u64,
}

/// Where the state lives now: the final target of the configured path's
/// symlink chain (the path itself when it is no link).
struct Target {
    file: PathBuf,
    dir: PathBuf,
    /// The target's file name, as temp-file names start with it.
    name: String,
    /// Permission bits of the file there now, given to its replacement.
    mode: Option<u32>,
}

impl FileStore {
    /// Opens `path` from the config. The (target's) directory must exist; a
    /// missing file is created empty (empty means "nothing stored"). A path
    /// that is, or links to, anything but a regular file is an error and is
    /// left untouched.
    pub fn open(config: &Config) -> Result<FileStore, StoreError> {
        let Settings { path, raw } = config.settings()?;
        let path = PathBuf::from(path);
        let resource = Resource { backend: "local-file", name: path.display().to_string() };
        if path.file_name().is_none() {
            return Err(StoreError::config("local-file", format!("`{}` does not name a file", path.display())));
        }
        let store = FileStore {
            resource,
            path,
            raw,
            store_id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            temp_counter: 0,
        };
        let target = store.target("opening")?;
        if !target.dir.is_dir() {
            let why = format!("{} directory {} does not exist", store.whose(&target, "parent"), target.dir.display());
            return Err(StoreError::backend(&store.resource, "opening", why));
        }
        // O_NOFOLLOW and O_NONBLOCK: were the target swapped for a link or a
        // FIFO since it was examined, this fails instead of following or blocking.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&target.file)
            .map_err(|e| StoreError::io(&store.resource, "creating the file", e))?;
        let meta = file.metadata().map_err(|e| StoreError::io(&store.resource, "examining the file", e))?;
        store.refuse_unless_regular(&target.file, &meta, "opening")?;
        remove_dead_writers_temp_files(&target);
        Ok(store)
    }

    /// "the" or "the symlink's target's", for messages about `target`.
    fn whose(&self, target: &Target, what: &str) -> String {
        if target.file == self.path {
            format!("the {what}")
        } else {
            format!("the symlink's target {}: its {what}", target.file.display())
        }
    }

    /// Follows the configured path's symlink chain to its end, and checks that
    /// what is there (if anything) is a regular file. Reads only metadata.
    fn target(&self, op: &str) -> Result<Target, StoreError> {
        let r = &self.resource;
        let mut file = self.path.clone();
        let mut links = 0;
        let meta = loop {
            match fs::symlink_metadata(&file) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        let why = format!("more than {MAX_LINKS} symlinks in a row from {} (a loop?)", self.path.display());
                        return Err(StoreError::backend(r, op, why));
                    }
                    let to = fs::read_link(&file)
                        .map_err(|e| StoreError::io(r, format!("reading the symlink {}", file.display()), e))?;
                    // A relative link is relative to the directory holding the link.
                    file = match file.parent() {
                        Some(dir) if to.is_relative() => dir.join(to),
                        _ => to,
                    };
                }
                Ok(m) => break Some(m),
                Err(e) if e.kind() == ErrorKind::NotFound => break None,
                Err(e) => return Err(StoreError::io(r, format!("examining {}", file.display()), e)),
            }
        };
        if let Some(m) = &meta {
            self.refuse_unless_regular(&file, m, op)?;
        }
        let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            let why = format!("the symlink's target {} does not name a file", file.display());
            return Err(StoreError::backend(r, op, why));
        };
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Target { mode: meta.map(|m| m.permissions().mode() & 0o777), file, dir, name })
    }

    fn refuse_unless_regular(&self, file: &Path, meta: &Metadata, op: &str) -> Result<(), StoreError> {
        let t = meta.file_type();
        let what = if t.is_file() {
            return Ok(());
        } else if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        let whose = if file == self.path { "the path".to_string() } else { format!("the symlink's target {}", file.display()) };
        let why = format!("{whose} is {what}, not a regular file; duratom stores only in regular files and left it untouched");
        Err(StoreError::backend(&self.resource, op, why))
    }

    /// The target opened for reading, or `None` when there is no file.
    fn open_for_reading(&self, target: &Target, op: &str) -> Result<Option<File>, StoreError> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK) // see `open`
            .open(&target.file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&self.resource, op, e)),
        };
        let meta = file.metadata().map_err(|e| StoreError::io(&self.resource, op, e))?;
        self.refuse_unless_regular(&target.file, &meta, op)?;
        Ok(Some(file))
    }

    /// What the target holds: `None` when there is no file or it is empty,
    /// else the version and body, checked as `load` checks them (length and
    /// checksum), so a damaged file is Corrupt, naming it.
    fn read_stored(&self, target: &Target, op: &str) -> Result<Option<Stored>, StoreError> {
        let Some(mut file) = self.open_for_reading(target, op)? else { return Ok(None) };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| StoreError::io(&self.resource, op, e))?;
        if self.raw {
            return Ok((!bytes.is_empty()).then(|| Stored { version: Version::of_content(&bytes), bytes }));
        }
        let decoded = decode(bytes).map_err(|detail| self.corrupt(target, detail))?;
        Ok(decoded.map(|(count, body)| Stored { bytes: body, version: Version(count.to_string()) }))
    }

    /// The header count of the state stored after `previous` (the version
    /// last seen or found; `None`: nothing). Raw files have no count.
    fn next_count(&self, previous: Option<&Version>) -> Result<u64, StoreError> {
        match previous {
            _ if self.raw => Ok(0),
            None => Ok(1),
            Some(Version(v)) => match decimal(v).and_then(|n| n.checked_add(1)) {
                Some(next) => Ok(next),
                None => Err(StoreError::backend(&self.resource, "writing", format!("`{v}` is not a version of this file"))),
            },
        }
    }

    /// The version `bytes` are stored as: the header's count, or for a raw
    /// file the hash of the bytes.
    fn version_of(&self, count: u64, bytes: &[u8]) -> Version {
        if self.raw { Version::of_content(bytes) } else { Version(count.to_string()) }
    }

    /// The resource names the configured path; when that is a symlink, the
    /// detail names the damaged file it leads to.
    fn corrupt(&self, target: &Target, detail: impl Into<String>) -> StoreError {
        let detail = detail.into();
        let detail = if target.file == self.path { detail } else { format!("{}: {detail}", self.whose(target, "content")) };
        StoreError::Corrupt { resource: self.resource.clone(), detail }
    }

    /// Writes `bytes` (after a header with `count`) to a temp file and renames
    /// it over the target. A failure after the rename is OutcomeUnknown: the
    /// state may be stored, and the caller's next look at storage learns it.
    fn write_durably(&mut self, target: &Target, bytes: &[u8], count: u64) -> Result<Version, StoreError> {
        let (file, temp) = self.create_temp(target)?;
        let result = self.fill_and_rename(file, &temp, target, bytes, count);
        if result.is_err() {
            let _ = fs::remove_file(&temp); // best effort: the error says what went wrong
        }
        result.map(|()| self.version_of(count, bytes))
    }

    /// A new temp file beside the target, created and locked by this store.
    fn create_temp(&mut self, target: &Target) -> Result<(File, PathBuf), StoreError> {
        let r = &self.resource;
        let mode = target.mode.unwrap_or(0o666);
        for _ in 0..16 {
            self.temp_counter += 1;
            let name = format!(
                ".{}.{}-{}-{}-{:016x}.tmp",
                target.name,
                std::process::id(),
                self.store_id,
                self.temp_counter,
                random_u64()
            );
            let temp = target.dir.join(name);
            // Created with the target's permission bits (less the umask), so a
            // private file never exists with wider ones, then given exactly them.
            let file = match OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io(r, format!("creating temp file {}", temp.display()), e)),
            };
            // Held until after the rename: clean-up removes only unlocked temp files.
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue, // a clean-up took it first and removes it
                Err(TryLockError::Error(e)) => {
                    let _ = fs::remove_file(&temp);
                    return Err(StoreError::io(r, format!("locking temp file {}", temp.display()), e));
                }
            }
            // A clean-up may have locked, removed and released it before we locked it.
            if !names_file(&temp, &file) {
                continue;
            }
            if target.mode.is_some() {
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(|e| StoreError::io(r, format!("setting permissions of temp file {}", temp.display()), e))?;
            }
            return Ok((file, temp));
        }
        let why = format!("could not create a temp file of its own in {}", target.dir.display());
        Err(StoreError::backend(r, "writing", why))
    }

    fn fill_and_rename(&self, mut file: File, temp: &Path, target: &Target, bytes: &[u8], version: u64) -> Result<(), StoreError> {
        let r = &self.resource;
        if !self.raw {
            file.write_all(&header(version, bytes)).map_err(|e| StoreError::io(r, "writing temp file", e))?;
        }
        file.write_all(bytes).map_err(|e| StoreError::io(r, "writing temp file", e))?;
        file.sync_data().map_err(|e| StoreError::io(r, "fsync of temp file", e))?;
        // The directory is opened before the rename, and must be the one
        // holding the temp file: its fsync then reaches the directory the
        // rename landed in, even if that directory is moved meanwhile (by
        // path, it would fail or reach another one).
        let dir = File::open(&target.dir).map_err(|e| StoreError::io(r, format!("opening directory {}", target.dir.display()), e))?;
        if !holds(&dir, temp, &file) {
            let why = format!("the directory {} was moved or replaced during the commit; nothing was replaced", target.dir.display());
            return Err(StoreError::backend(r, "writing", why));
        }
        // A failed rename changed nothing: a plain failure.
        fs::rename(temp, &target.file).map_err(|e| StoreError::io(r, "renaming temp file over the target", e))?;
        drop(file); // releases the temp file's lock, now that the name is gone
        // The file holds the new state now. Should what follows fail, it may
        // not survive a crash, and the caller must not take it as not written.
        after_rename(&target.dir)
            .and_then(|()| dir.sync_all())
            .map_err(|e| StoreError::outcome_unknown(r, format!("fsync of directory {} after the rename", target.dir.display()), e))
    }

    /// Takes the cross-process lock on `<target>.lock`; the OS drops it if the
    /// holder dies, so a crashed process never blocks the others.
    fn lock_file(&self, target: &Target) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(target))
            .map_err(|e| StoreError::io(&self.resource, "opening the lock file", e))?;
        file.lock().map_err(|e| StoreError::io(&self.resource, "taking the lock file", e))?;
        Ok(file)
    }
}

fn lock_path(target: &Target) -> PathBuf {
    let mut path = target.file.clone().into_os_string();
    path.push(".lock");
    PathBuf::from(path)
}

/// Whether the directory `dir` is open on holds `temp` as the file `file`
/// is open on.
fn holds(dir: &File, temp: &Path, file: &File) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = temp.file_name().and_then(|n| std::ffi::CString::new(n.as_bytes()).ok()) else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name and a stat buffer of ours.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return false;
    }
    // dev_t is i32 on macOS (u64 on Linux); std's dev() widens it with `as`
    // too, so the same cast keeps both sides equal on every target.
    #[allow(clippy::unnecessary_cast)]
    let same = |m: std::fs::Metadata| m.dev() == st.st_dev as u64 && m.ino() == st.st_ino as u64;
    file.metadata().is_ok_and(same)
}

/// Runs between a commit's rename and its directory fsync. Tests put a fault
/// there (a moved directory; an error, as a failing fsync gives, which a real
/// file system cannot be made to give on demand); elsewhere it does nothing.
#[cfg(not(test))]
fn after_rename(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
thread_local! {
    static AFTER_RENAME: std::cell::Cell<Option<fn(&Path) -> std::io::Result<()>>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn after_rename(dir: &Path) -> std::io::Result<()> {
    AFTER_RENAME.with(|f| f.get().map_or(Ok(()), |f| f(dir)))
}

/// Whether `path` still names the file `file` is open on.
fn names_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Not cryptographic; with the pid and store id it keeps temp names apart
/// across processes that reuse a crashed process's pid.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Removes the target's temp files whose writer is provably gone: those
/// whose flock can be taken. A live writer holds its lock from just after
/// creating the file until after renaming it; one that finds its fresh file
/// locked or removed by this clean-up starts over with a new name.
fn remove_dead_writers_temp_files(target: &Target) {
    let prefix = format!(".{}.", target.name);
    let Ok(entries) = fs::read_dir(&target.dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(middle) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        if middle.is_empty() || !middle.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            continue; // not a name we give
        }
        let path = entry.path();
        // Write access: flock over NFS is emulated with locks that need it.
        let Ok(file) = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) || file.try_lock().is_err() {
            continue; // not ours, or its writer is alive
        }
        // It may have been renamed over the target while we opened it.
        if names_file(&path, &file) {
            let _ = fs::remove_file(&path); // best effort: it is garbage either way
        }
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        let target = self.target("reading")?;
        self.read_stored(&target, "reading")
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        let target = self.target("writing")?;
        match expect {
            Expect::Anything { after } => {
                let count = self.next_count(after.as_ref())?;
                self.write_durably(&target, bytes, count)
            }
            Expect::Nothing | Expect::Version(_) => {
                let _lock = self.lock_file(&target)?; // released when dropped, also on error
                // The whole file, checked: a damaged file's version number
                // (or one damaged into the expected number) must not pass
                // as "unchanged" and be overwritten unseen.
                let stored = self.read_stored(&target, "reading the stored version")?.map(|s| s.version);
                let holds = match (expect, &stored) {
                    (Expect::Nothing, None) => true,
                    (Expect::Version(v), Some(s)) => v == s,
                    _ => false,
                };
                if !holds {
                    return Err(StoreError::Conflict { resource: self.resource.clone() });
                }
                let count = self.next_count(stored.as_ref())?;
                self.write_durably(&target, bytes, count)
            }
        }
    }

    /// Removes the file the path leads to (a symlink stays, dangling: the
    /// next store there writes through it again) and the lock file beside it.
    fn delete(&mut self) -> Result<(), StoreError> {
        let target = self.target("deleting")?;
        // Opened before the removal, as for a commit's rename: its fsync
        // reaches the directory the removal happened in, even if it moves.
        let dir = File::open(&target.dir).map_err(|e| StoreError::io(&self.resource, format!("opening directory {}", target.dir.display()), e))?;
        match fs::remove_file(&target.file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&self.resource, "deleting", e)),
        }
        let _ = fs::remove_file(lock_path(&target)); // only exists after a conditional commit
        dir.sync_all().map_err(|e| StoreError::io(&self.resource, "fsync of directory after delete", e))
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

const DAMAGED_HEADER: &str = "the first line is a damaged duratom header (expected \
     `;duratom/v2 version=N length=N crc32=HEX`, or `;duratom/v1 ...` as earlier builds wrote it)";

/// How a file's first bytes read.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Lead {
    /// Our header tag.
    V2,
    /// The tag earlier builds wrote.
    V1,
    /// No header: plain EDN (the original library's, or hand-written).
    Plain,
    /// A tag with one byte changed, or a file cut off inside a tag.
    Damaged,
}

fn lead_of(bytes: &[u8]) -> Lead {
    let tags = [HEADER_TAG, HEADER_TAG_V1];
    if bytes.len() < HEADER_TAG.len() {
        return if tags.iter().any(|t| t.starts_with(bytes)) { Lead::Damaged } else { Lead::Plain };
    }
    let lead = &bytes[..HEADER_TAG.len()];
    if lead == HEADER_TAG {
        return Lead::V2;
    }
    if lead == HEADER_TAG_V1 {
        return Lead::V1;
    }
    let one_off = |tag: &[u8]| lead.iter().zip(tag).filter(|(a, b)| a != b).count() == 1;
    if tags.iter().any(|t| one_off(t)) {
        Lead::Damaged
    } else {
        Lead::Plain
    }
}

/// The header line for `body` stored as `version`.
fn header(version: u64, body: &[u8]) -> Vec<u8> {
    let numbers = format!("version={version} length={}", body.len());
    let crc = checksum(numbers.as_bytes(), body);
    let mut line = HEADER_TAG.to_vec();
    line.extend_from_slice(format!("{numbers} crc32={crc:08x}\n").as_bytes());
    line
}

/// CRC-32 of the header's numbers text and the body: any one damaged byte in
/// either changes it.
fn checksum(numbers: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(numbers);
    h.update(body);
    h.finalize()
}

/// What a file's bytes hold: `None` when empty, else the version and body.
/// The error says how the bytes are damaged.
fn decode(mut bytes: Vec<u8>) -> Result<Option<(u64, Vec<u8>)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let tag = match lead_of(&bytes) {
        Lead::Plain => return Ok(Some((0, bytes))),
        Lead::Damaged => return Err(DAMAGED_HEADER.into()),
        Lead::V2 => HEADER_TAG,
        Lead::V1 => HEADER_TAG_V1,
    };
    let h = parse_header(&bytes, tag).ok_or(DAMAGED_HEADER)?;
    let body = &bytes[h.body_start..];
    if body.len() as u64 != h.length {
        return Err(format!("header says {} bytes, file holds {}", h.length, body.len()));
    }
    let crc = if tag == HEADER_TAG_V1 {
        crc32fast::hash(body) // v1 checksummed the body only
    } else {
        checksum(&bytes[h.numbers.clone()], body)
    };
    if crc != h.crc32 {
        return Err(format!("checksum {crc:08x} does not match the header's {:08x}", h.crc32));
    }
    bytes.drain(..h.body_start);
    Ok(Some((h.version, bytes)))
}

struct Header {
    version: u64,
    length: u64,
    crc32: u32,
    /// Where the `version=.. length=..` text lies in the file.
    numbers: std::ops::Range<usize>,
    body_start: usize,
}

/// Parses `<tag>version=N length=N crc32=HEX\n` exactly as `header` (and,
/// with the v1 tag, the v1 writer) writes it: decimal numbers without a
/// leading zero, eight lower-case hex digits, single spaces. `None` when it
/// is anything else.
fn parse_header(bytes: &[u8], tag: &[u8]) -> Option<Header> {
    if !bytes.starts_with(tag) {
        return None;
    }
    let end = bytes.iter().take(HEADER_MAX).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[tag.len()..end]).ok()?;
    let (numbers, crc) = line.split_once(" crc32=")?;
    let (version, length) = numbers.strip_prefix("version=")?.split_once(" length=")?;
    if crc.len() != 8 || !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some(Header {
        version: decimal(version)?,
        length: decimal(length)?,
        crc32: u32::from_str_radix(crc, 16).ok()?,
        numbers: tag.len()..tag.len() + numbers.len(),
        body_start: end + 1,
    })
}

/// A decimal number as the header writes it. Canonical only: for v1, whose
/// checksum leaves the version out, a digit damaged into a leading zero is
/// at least caught.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A file as the v1 writer (the build before v2) wrote it: its header line,
/// whose checksum covers the body only, then the body. Tests only: v1 is
/// read, never written.
#[cfg(test)]
fn v1_file(version: u64, body: &[u8]) -> Vec<u8> {
    let line = format!(";duratom/v1 version={version} length={} crc32={:08x}\n", body.len(), crc32fast::hash(body));
    [line.as_bytes(), body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::mpsc;
    use std::time::Duration;

    fn store(dir: &Path, name: &str) -> FileStore {
        open_at(&dir.join(name)).unwrap()
    }

    fn open_at(path: &Path) -> Result<FileStore, StoreError> {
        FileStore::open(&Config::from_pairs("local-file", &[("path", path.to_str().unwrap())]))
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    fn c_path(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// Opens a store at `path` on another thread: a bug that opened a FIFO
    /// would block for ever, and must fail the test instead.
    fn open_within_10s(path: &Path) -> Result<FileStore, StoreError> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(open_at(&path));
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("opening the store blocked (did it open a FIFO?)")
    }

    #[test]
    fn commit_then_load_round_trips_and_counts_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), "a.edn");
        assert!(s.load().unwrap().is_none(), "a new file holds nothing");
        let v1 = s.commit(b"{:x 1}", &Expect::Anything { after: None }).unwrap();
        let v2 = s.commit("{:x \"\u{1F600}\"}".as_bytes(), &Expect::Anything { after: Some(v1.clone()) }).unwrap();
        assert_eq!((v1, v2.clone()), (Version("1".into()), Version("2".into())));
        let got = store(dir.path(), "a.edn").load().unwrap().unwrap();
        assert_eq!(got.bytes, "{:x \"\u{1F600}\"}".as_bytes());
        assert_eq!(got.version, v2);
        assert_eq!(names_in(dir.path()), ["a.edn"], "no temp files left");
    }

    #[test]
    fn plain_edn_from_the_original_library_loads_as_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old.edn"), b"{:a #sorted/map {:b 1}}").unwrap();
        let got = store(dir.path(), "old.edn").load().unwrap().unwrap();
        assert_eq!(got.bytes, b"{:a #sorted/map {:b 1}}");
        assert_eq!(got.version, Version("0".into()));
    }

    #[test]
    fn damaged_file_is_an_error_and_stays_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), "d.edn");
        s.commit(b"{:x 12345}", &Expect::Anything { after: None }).unwrap();
        let path = dir.path().join("d.edn");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] = b'9';
        fs::write(&path, &bytes).unwrap();
        let e = store(dir.path(), "d.edn").load().unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("d.edn"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_damaged_commit_count_is_caught_by_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), "n.edn");
        let mut after = None;
        for _ in 0..17 {
            after = Some(s.commit(b"{:x 1}", &Expect::Anything { after }).unwrap());
        }
        let path = dir.path().join("n.edn");
        let good = fs::read_to_string(&path).unwrap();
        assert!(good.starts_with(";duratom/v2 version=17 length=6 crc32="), "{good}");
        // Self-consistent by themselves: a plausible count, the true length.
        fs::write(&path, good.replacen("version=17", "version=97", 1)).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn conditional_commits_refuse_a_stale_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = store(dir.path(), "c.edn");
        let mut b = store(dir.path(), "c.edn");
        let v1 = a.commit(b"1", &Expect::Nothing).unwrap();
        assert!(matches!(b.commit(b"2", &Expect::Nothing), Err(StoreError::Conflict { .. })));
        let v2 = b.commit(b"2", &Expect::Version(v1.clone())).unwrap();
        assert!(matches!(a.commit(b"3", &Expect::Version(v1)), Err(StoreError::Conflict { .. })));
        a.commit(b"3", &Expect::Version(v2)).unwrap();
        assert_eq!(b.load().unwrap().unwrap().bytes, b"3");
    }

    /// The store keeps no count of its own: an unconditional commit is
    /// numbered after the version the caller hands it, whatever this store
    /// handle did before.
    #[test]
    fn an_unconditional_commit_is_numbered_after_the_version_the_caller_saw() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), "u.edn");
        assert_eq!(s.commit(b"{:a 1}", &Expect::Anything { after: Some(Version("41".into())) }).unwrap(), Version("42".into()));
        assert_eq!(store(dir.path(), "u.edn").load().unwrap().unwrap().version, Version("42".into()));
        assert_eq!(s.commit(b"{:a 2}", &Expect::Anything { after: None }).unwrap(), Version("1".into()));
        let e = s.commit(b"{:a 3}", &Expect::Anything { after: Some(Version("sha256:00".into())) }).unwrap_err();
        assert!(e.to_string().contains("`sha256:00` is not a version of this file"), "{e}");
        assert_eq!(s.load().unwrap().unwrap().bytes, b"{:a 2}", "nothing written");
    }

    fn open_raw(path: &Path) -> FileStore {
        FileStore::open(&Config::from_pairs("local-file", &[("path", path.to_str().unwrap()), ("raw", "true")])).unwrap()
    }

    /// A custom `:rw` file has no header: its version is its content's hash,
    /// so two processes sharing it cannot both pass a compare-and-set.
    #[test]
    fn a_raw_file_is_versioned_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        let (mut a, mut b) = (open_raw(&path), open_raw(&path));
        let v1 = a.commit(&[0, 1, 2], &Expect::Nothing).unwrap();
        assert_eq!(v1, Version::of_content(&[0, 1, 2]));
        assert_eq!(fs::read(&path).unwrap(), [0, 1, 2], "stored as given, no header");
        assert_eq!(b.load().unwrap().unwrap().version, v1);
        let v2 = b.commit(&[3], &Expect::Version(v1.clone())).unwrap();
        assert!(matches!(a.commit(&[4], &Expect::Version(v1)), Err(StoreError::Conflict { .. })), "a stale version is refused");
        assert_eq!(fs::read(&path).unwrap(), [3]);
        a.commit(&[4], &Expect::Version(v2)).unwrap();
        let unconditional = a.commit(&[5, 6], &Expect::Anything { after: None }).unwrap();
        assert_eq!((unconditional, fs::read(&path).unwrap()), (Version::of_content(&[5, 6]), vec![5, 6]));
    }

    #[test]
    fn a_symlink_chain_is_written_through_and_stays_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("state.edn");
        fs::write(&real, b"{:old true}").unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o640)).unwrap();
        // link -> middle (absolute) -> real/state.edn (relative to the middle link's directory)
        let middle = dir.path().join("middle.edn");
        std::os::unix::fs::symlink("real/state.edn", &middle).unwrap();
        let link = dir.path().join("link.edn");
        std::os::unix::fs::symlink(&middle, &link).unwrap();

        let mut s = open_at(&link).unwrap();
        assert_eq!(s.load().unwrap().unwrap().bytes, b"{:old true}", "loads through the chain");
        let v = s.commit(b"{:new 1}", &Expect::Anything { after: Some(Version("0".into())) }).unwrap();
        let v = s.commit(b"{:new 2}", &Expect::Anything { after: Some(v) }).unwrap();
        s.commit(b"{:new 3}", &Expect::Version(v)).unwrap();

        for l in [&link, &middle] {
            assert!(fs::symlink_metadata(l).unwrap().file_type().is_symlink(), "{} is still a link", l.display());
        }
        assert_eq!(fs::read_link(&middle).unwrap(), Path::new("real/state.edn"));
        let meta = fs::symlink_metadata(&real).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "the target keeps its permission bits");
        assert!(fs::read_to_string(&real).unwrap().ends_with("\n{:new 3}"));
        assert_eq!(store(&real_dir, "state.edn").load().unwrap().unwrap().bytes, b"{:new 3}");
        assert_eq!(names_in(dir.path()), ["link.edn", "middle.edn", "real"], "nothing beside the links");
        assert_eq!(names_in(&real_dir), ["state.edn", "state.edn.lock"], "no temp file left beside the target");

        s.delete().unwrap();
        assert!(!real.exists() && fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "delete removes the target, not the link");
        let mut again = open_at(&link).unwrap();
        assert!(again.load().unwrap().is_none());
        again.commit(b"{:again 1}", &Expect::Anything { after: None }).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(fs::read_to_string(&real).unwrap().ends_with("{:again 1}"), "a dangling link is written through");
    }

    #[test]
    fn a_symlink_loop_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.edn");
        let b = dir.path().join("b.edn");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = open_at(&a).err().unwrap();
        assert!(e.to_string().contains("symlinks in a row") && e.to_string().contains("a.edn"), "{e}");
    }

    /// Every kind of special file, directly and behind a symlink: refused at
    /// open, left as it was, and nothing created beside it.
    #[test]
    fn fifos_devices_and_sockets_are_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert_eq!(unsafe { libc::mkfifo(c_path(&fifo).as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
        let device = dir.path().join("null-device");
        // The numbers of /dev/null: a harmless device to refuse.
        let made = unsafe { libc::mknod(c_path(&device).as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        assert_eq!(
            made,
            0,
            "mknod of a character device failed ({}); this test needs root or CAP_MKNOD, as CI has",
            std::io::Error::last_os_error()
        );
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let link = dir.path().join("link-to-device");
        std::os::unix::fs::symlink(&device, &link).unwrap();

        let before = names_in(dir.path());
        for (path, what) in [(&fifo, "a FIFO"), (&device, "a character device"), (&socket, "a socket"), (&link, "a character device")] {
            let e = open_within_10s(path).err().unwrap_or_else(|| panic!("{} was accepted", path.display()));
            let msg = e.to_string();
            assert!(msg.contains(what) && msg.contains(&*path.to_string_lossy()), "{msg}");
            assert!(msg.contains("left it untouched"), "{msg}");
        }
        assert_eq!(names_in(dir.path()), before, "no temp or lock file was created");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        let dev = fs::symlink_metadata(&device).unwrap();
        assert!(dev.file_type().is_char_device() && dev.rdev() == libc::makedev(1, 3));
        assert!(fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_file_swapped_for_a_fifo_after_open_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.edn");
        let mut s = open_at(&path).unwrap();
        let v = s.commit(b"1", &Expect::Anything { after: None }).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path(&path).as_ptr(), 0o600) }, 0);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let load = s.load().map(|_| ()).map_err(|e| e.to_string());
            let commit = s.commit(b"2", &Expect::Anything { after: Some(v) }).map(|_| ()).map_err(|e| e.to_string());
            let _ = tx.send((load, commit));
        });
        let (load, commit) = rx.recv_timeout(Duration::from_secs(10)).expect("load or commit blocked on the FIFO");
        assert!(load.unwrap_err().contains("a FIFO"));
        assert!(commit.unwrap_err().contains("a FIFO"));
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo(), "the FIFO was not replaced");
    }

    #[test]
    fn clean_up_removes_temp_files_only_when_no_writer_holds_their_lock() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        // Named with a live pid (ours), as a reused pid would be: unlocked, so its writer is gone.
        let stale = dir.path().join(format!(".s.edn.{pid}-1-1-00000000deadbeef.tmp"));
        // A writer mid-commit holds the lock on its temp file.
        let in_flight = dir.path().join(format!(".s.edn.{pid}-2-1-00000000cafef00d.tmp"));
        let other = dir.path().join(".other.edn.999999999-1-1-0.tmp");
        let users = dir.path().join(".s.edn.backup.tmp");
        for p in [&stale, &in_flight, &other, &users] {
            fs::write(p, b"partial").unwrap();
        }
        let writer = OpenOptions::new().write(true).open(&in_flight).unwrap();
        writer.lock().unwrap();
        store(dir.path(), "s.edn");
        assert!(!stale.exists(), "a temp file nobody holds is removed, whatever pid its name has");
        assert!(in_flight.exists(), "a live writer's temp file stays");
        assert!(other.exists(), "another file's temp files are not ours");
        assert!(users.exists(), "a name we never give is not ours");
        drop(writer); // as when the writer's process dies
        store(dir.path(), "s.edn");
        assert!(!in_flight.exists(), "removed once its writer is gone");
    }

    /// Stores on one path commit while others open it (and clean up): no
    /// store ever removes another's temp file or collides with its name.
    #[test]
    fn stores_sharing_a_path_in_one_process_never_disturb_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.edn");
        open_at(&path).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    open_at(&path).unwrap();
                    opened += 1;
                }
                opened
            })
        };
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut s = open_at(&path).unwrap();
                    let mut after = None;
                    for i in 0..300 {
                        after = Some(s.commit(format!("{{:w {w} :i {i}}}").as_bytes(), &Expect::Anything { after }).unwrap());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a commit failed");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(opener.join().unwrap() > 0);
        assert!(fs::read_to_string(&path).unwrap().ends_with(":i 299}"));
        assert_eq!(names_in(dir.path()), ["shared.edn"]);
    }

    #[test]
    fn missing_parent_and_directory_paths_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/x.edn");
        let e = open_at(&missing).err().unwrap();
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("nope"), "{e}");
        let e = open_at(dir.path()).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let dangling = dir.path().join("dangling.edn");
        std::os::unix::fs::symlink(dir.path().join("gone/x.edn"), &dangling).unwrap();
        let e = open_at(&dangling).err().unwrap();
        assert!(e.to_string().contains("symlink's target") && e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn the_header_tag_is_told_apart_from_plain_edn() {
        assert_eq!(lead_of(b";duratom/v2 version="), Lead::V2);
        assert_eq!(lead_of(b";duratom/v1 version="), Lead::V1);
        assert_eq!(lead_of(b";duratom/v3 version="), Lead::Damaged, "one byte off");
        assert_eq!(lead_of(b"{duratom/v2 "), Lead::Damaged, "one byte off");
        assert_eq!(lead_of(b";duratom/v1_"), Lead::Damaged, "one byte off v1");
        assert_eq!(lead_of(b";dura"), Lead::Damaged, "cut off inside the tag");
        assert_eq!(lead_of(b";duratom/v1"), Lead::Damaged, "cut off inside the v1 tag");
        assert_eq!(lead_of(b"{:a 1}"), Lead::Plain);
        assert_eq!(lead_of(b"1"), Lead::Plain);
        assert_eq!(lead_of(b";; a comment\n{:a 1}"), Lead::Plain);
    }

    /// A file as the build before v2 wrote it (its state survives the upgrade).
    #[test]
    fn a_file_written_by_the_v1_build_loads_and_the_next_commit_writes_v2() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"{:users #{\"ada\"} :n 41}";
        for expect in [Expect::Anything { after: Some(Version("7".into())) }, Expect::Version(Version("7".into()))] {
            let path = dir.path().join("old.edn");
            fs::write(&path, v1_file(7, body)).unwrap();
            let mut s = open_at(&path).unwrap();
            let got = s.load().unwrap().unwrap();
            assert_eq!(got.bytes, body);
            assert_eq!(got.version, Version("7".into()));
            let v = s.commit(b"{:n 42}", &expect).unwrap();
            assert_eq!(v, Version("8".into()), "the count goes on from the v1 file's ({expect:?})");
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.starts_with(";duratom/v2 version=8 length=7 crc32="), "{text}");
            assert_eq!(text, String::from_utf8([header(8, b"{:n 42}"), b"{:n 42}".to_vec()].concat()).unwrap());
            let again = open_at(&path).unwrap().load().unwrap().unwrap();
            assert_eq!((again.bytes, again.version), (b"{:n 42}".to_vec(), Version("8".into())));
        }
    }

    /// Every truncation and every single-byte change (all 255 of them) of a
    /// v1 file is refused, except the one thing v1 cannot show: a digit of
    /// its version changed into another digit loads the exact stored value
    /// under that other version.
    #[test]
    fn damaged_v1_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.edn");
        let mut store = open_at(&path).unwrap();
        let body = b"{:n 12345 :s \"x\ny\"}";
        let written = v1_file(1234, body);
        let digits = ";duratom/v1 version=".len().."duratom/v1 version=1234".len() + 1;
        assert_eq!(&written[digits.clone()], b"1234");
        let mut load = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            store.load()
        };
        assert_eq!(load(&written).unwrap().unwrap().bytes, body);
        for len in 1..written.len() {
            let got = load(&written[..len]);
            assert!(matches!(got, Err(StoreError::Corrupt { .. })), "cut to {len} bytes: {:?}", got.map(|s| s.map(|s| s.version)));
        }
        let mut other_versions = 0;
        for i in 0..written.len() {
            for mask in 1..=255u8 {
                let mut damaged = written.clone();
                damaged[i] ^= mask;
                match load(&damaged) {
                    Err(StoreError::Corrupt { .. }) => {}
                    Ok(Some(s)) if digits.contains(&i) && s.bytes == body && s.version != Version("1234".into()) => other_versions += 1,
                    other => panic!("byte {i} ^ {mask:#04x}: {:?}", other.map(|s| s.map(|s| (String::from_utf8_lossy(&s.bytes).into_owned(), s.version)))),
                }
            }
        }
        // Each version digit into each of the other digits, less a leading zero.
        assert_eq!(other_versions, 4 * 9 - 1);
    }

    /// A conditional commit checks the whole stored file, as a load does: a
    /// damaged file never passes as "version unchanged" and is never
    /// overwritten unseen; the error names the file.
    #[test]
    fn a_conditional_commit_refuses_a_damaged_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cas.edn");
        let mut s = open_at(&path).unwrap();
        let mut v = s.commit(b"{:x 12345}", &Expect::Nothing).unwrap();
        for _ in 0..11 {
            v = s.commit(b"{:x 12345}", &Expect::Version(v)).unwrap();
        }
        assert_eq!(v, Version("12".into()));
        let good = fs::read(&path).unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let cases: Vec<(&str, Vec<u8>, Version)> = vec![
            ("a damaged value", text.replacen("12345", "12945", 1).into_bytes(), v.clone()),
            // The number this store expects, but the checksum says otherwise.
            ("a damaged version", text.replacen("version=12", "version=13", 1).into_bytes(), Version("13".into())),
            ("a damaged v1 value", { let mut b = v1_file(12, b"{:x 12345}"); let n = b.len() - 3; b[n] = b'9'; b }, v.clone()),
        ];
        for (what, damaged, expected) in cases {
            fs::write(&path, &damaged).unwrap();
            let e = s.commit(b"{:x 0}", &Expect::Version(expected)).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { .. }), "{what}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&*path.to_string_lossy()) && msg.contains("damaged"), "{what}: {msg}");
            assert_eq!(fs::read(&path).unwrap(), damaged, "{what}: the damaged file stays as it was");
        }
        fs::write(&path, &good).unwrap();
        assert_eq!(s.commit(b"{:x 0}", &Expect::Version(v)).unwrap(), Version("13".into()), "the intact file commits");
    }

    fn moved_away(dir: &Path) -> PathBuf {
        PathBuf::from(format!("{}.away", dir.display()))
    }

    /// The directory moved away between the rename and its fsync: the
    /// directory opened before the rename is fsynced wherever it is now, and
    /// the commit succeeds (by path, the fsync failed although the state had
    /// landed). Then a directory fsync that fails: the outcome is unknown.
    #[test]
    fn a_failure_after_the_rename_is_never_a_plain_failure() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("d");
        fs::create_dir(&dir).unwrap();
        let path = dir.join("s.edn");
        let mut s = open_at(&path).unwrap();
        let v1 = s.commit(b"{:n 1}", &Expect::Anything { after: None }).unwrap();

        AFTER_RENAME.with(|f| f.set(Some(|dir| fs::rename(dir, moved_away(dir)))));
        let v = s.commit(b"{:n 2}", &Expect::Anything { after: Some(v1) });
        AFTER_RENAME.with(|f| f.set(None));
        fs::rename(moved_away(&dir), &dir).unwrap();
        assert_eq!(v.unwrap(), Version("2".into()), "the commit landed and its directory was fsynced");
        assert_eq!(s.load().unwrap().unwrap().bytes, b"{:n 2}");

        AFTER_RENAME.with(|f| f.set(Some(|_| Err(std::io::Error::from_raw_os_error(libc::EIO)))));
        let e = s.commit(b"{:n 3}", &Expect::Version(Version("2".into()))).unwrap_err();
        AFTER_RENAME.with(|f| f.set(None));
        assert!(matches!(e, StoreError::OutcomeUnknown { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&*path.to_string_lossy()) && msg.contains("fsync of directory") && msg.contains("outcome unknown"), "{msg}");
        let stored = open_at(&path).unwrap().load().unwrap().unwrap();
        assert_eq!((stored.bytes, stored.version.clone()), (b"{:n 3}".to_vec(), Version("3".into())), "the state landed");
        let after = Some(stored.version);
        assert_eq!(s.commit(b"{:n 4}", &Expect::Anything { after }).unwrap(), Version("4".into()), "counts on from the landed state");
        assert_eq!(names_in(&dir), ["s.edn", "s.edn.lock"], "no temp file left");
    }

    /// Behind a symlink, the error names the damaged target too.
    #[test]
    fn a_damaged_symlink_target_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.edn");
        let link = dir.path().join("link.edn");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut s = open_at(&link).unwrap();
        let v = s.commit(b"{:x 1}", &Expect::Nothing).unwrap();
        let mut bytes = fs::read(&real).unwrap();
        let n = bytes.len() - 2;
        bytes[n] = b'7';
        fs::write(&real, &bytes).unwrap();
        for e in [s.commit(b"{:x 2}", &Expect::Version(v)).unwrap_err(), s.load().unwrap_err()] {
            let msg = e.to_string();
            assert!(msg.contains(&*link.to_string_lossy()) && msg.contains(&*real.to_string_lossy()), "{msg}");
        }
    }
}

/// Property tests: whatever bytes the file holds, loading it never panics
/// and never yields a value other than one that was stored.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn open_at(path: &Path) -> FileStore {
        FileStore::open(&Config::from_pairs("local-file", &[("path", path.to_str().unwrap())])).unwrap()
    }

    /// Loads `bytes` as the file's content.
    fn load_bytes(store: &mut FileStore, path: &Path, bytes: &[u8]) -> Result<Option<Stored>, StoreError> {
        fs::write(path, bytes).unwrap();
        store.load()
    }

    /// What a file we wrote must load as: exactly the stored body and
    /// version, nothing at all for an empty file (an empty file is what open
    /// creates, "nothing stored"), or a Corrupt error.
    fn check_outcome(got: Result<Option<Stored>, StoreError>, len: usize, body: &[u8], version: &Version) -> Result<(), TestCaseError> {
        match got {
            Ok(None) => prop_assert_eq!(len, 0, "only an empty file loads as nothing"),
            Ok(Some(s)) => {
                prop_assert_eq!(&s.bytes[..], body, "loaded a value that was never stored");
                prop_assert_eq!(&s.version, version);
            }
            Err(StoreError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "not a Corrupt error: {}", e),
        }
        Ok(())
    }

    /// `written` whole, cut at every length, and with the byte at every
    /// position changed by `masks`: each loads as `body` and `version`, or
    /// fails as Corrupt. A change inside `unchecked` (where the format has
    /// no checksum) may load `body` under another version.
    fn check_every_cut_and_change(
        store: &mut FileStore,
        path: &Path,
        written: &[u8],
        body: &[u8],
        version: &Version,
        unchecked: std::ops::Range<usize>,
        masks: &[u8],
    ) -> Result<(), TestCaseError> {
        check_outcome(load_bytes(store, path, written), written.len(), body, version)?;
        for len in 0..written.len() {
            check_outcome(load_bytes(store, path, &written[..len]), len, body, version)?;
        }
        for i in 0..written.len() {
            let mut damaged = written.to_vec();
            damaged[i] ^= masks[i % masks.len()];
            match load_bytes(store, path, &damaged) {
                Ok(Some(s)) if unchecked.contains(&i) => prop_assert_eq!(&s.bytes[..], body),
                got => check_outcome(got, damaged.len(), body, version)?,
            }
        }
        Ok(())
    }

    /// Arbitrary bytes, some starting with our tag or a whole valid-looking header.
    fn file_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::collection::vec(any::<u8>(), 0..400).prop_map(|tail| [HEADER_TAG, &tail[..]].concat()),
            proptest::collection::vec(any::<u8>(), 0..400).prop_map(|tail| [HEADER_TAG_V1, &tail[..]].concat()),
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(
                |(v1, v, l, c, tail)| {
                    let tag = if v1 { "v1" } else { "v2" };
                    [format!(";duratom/{tag} version={v} length={} crc32={c:08x}\n", l % 300).as_bytes(), &tail[..]].concat()
                }
            ),
            // Well-formed v1 files, some with a damaged byte.
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200), any::<usize>(), 0u8..=255).prop_map(
                |(v, body, at, mask)| {
                    let mut b = v1_file(v, &body);
                    let n = b.len();
                    b[at % n] ^= mask;
                    b
                }
            ),
        ]
    }

    proptest! {
        // Each case commits (with fsync) and then loads its file hundreds of times.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any bytes in place of the file: no panic; the load is either
        /// the bytes themselves (a header-less file), or a body that our
        /// writer would have written exactly these bytes for, or Corrupt.
        #[test]
        fn arbitrary_bytes_load_as_themselves_or_as_written_or_fail_as_corrupt(bytes in file_bytes()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.edn");
            let mut store = open_at(&path);
            match load_bytes(&mut store, &path, &bytes) {
                Ok(None) => prop_assert!(bytes.is_empty()),
                Ok(Some(s)) if s.version.0 == "0" && s.bytes == bytes => {}
                Ok(Some(s)) => {
                    let version: u64 = s.version.0.parse().unwrap();
                    let v2 = [header(version, &s.bytes), s.bytes.clone()].concat();
                    prop_assert!(v2 == bytes || v1_file(version, &s.bytes) == bytes, "loaded what no writer wrote as these bytes");
                }
                Err(StoreError::Corrupt { .. }) => {}
                Err(e) => prop_assert!(false, "not a Corrupt error: {}", e),
            }
        }

        /// Every truncation, and a single-byte change at every position, of
        /// a file we wrote: the stored value exactly, or Corrupt.
        #[test]
        fn files_we_wrote_survive_every_truncation_and_single_byte_change(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            commits in 1u64..4,
            masks in proptest::collection::vec(1u8..=255, 300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("w.edn");
            let mut store = open_at(&path);
            let mut version = None;
            for _ in 0..commits {
                version = Some(store.commit(&body, &Expect::Anything { after: version }).unwrap());
            }
            let version = version.unwrap();
            let written = fs::read(&path).unwrap();
            check_every_cut_and_change(&mut store, &path, &written, &body, &version, 0..0, &masks)?;
        }

        /// Every truncation, and a single-byte change at every position, of
        /// a v1 file: the stored value, or Corrupt. Its version may differ
        /// only where v1 cannot tell: a change inside the version's digits.
        #[test]
        fn v1_files_survive_every_truncation_and_single_byte_change(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            version in 1u64..u64::MAX,
            masks in proptest::collection::vec(1u8..=255, 300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v1.edn");
            let mut store = open_at(&path);
            let written = v1_file(version, &body);
            let start = ";duratom/v1 version=".len();
            let digits = start..start + version.to_string().len();
            check_every_cut_and_change(&mut store, &path, &written, &body, &Version(version.to_string()), digits, &masks)?;
        }
    }

    /// Every one of the 255 other values at every position of one file.
    #[test]
    fn every_single_byte_change_of_a_small_file_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.edn");
        let mut store = open_at(&path);
        let body = b"{:n 12345 :s \"x\ny\"}".to_vec();
        let mut after = None;
        for _ in 0..12 {
            after = Some(store.commit(&body, &Expect::Anything { after }).unwrap());
        }
        let written = fs::read(&path).unwrap();
        let mut caught = 0;
        for i in 0..written.len() {
            for mask in 1..=255u8 {
                let mut damaged = written.clone();
                damaged[i] ^= mask;
                match load_bytes(&mut store, &path, &damaged) {
                    Err(StoreError::Corrupt { .. }) => caught += 1,
                    other => panic!("byte {i} ^ {mask:#04x}: {:?}", other.map(|s| s.map(|s| (String::from_utf8_lossy(&s.bytes).into_owned(), s.version)))),
                }
            }
        }
        assert_eq!(caught, written.len() * 255);
    }
}
