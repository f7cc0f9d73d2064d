//! The store: loads, commits and deletes, built from the settings.
//!
//! A commit is crash-durable: the new state goes to a temp file in the
//! directory of the file it replaces, which is fsynced, renamed over that
//! file, and then the directory is fsynced. Whenever the process or machine
//! dies, the file holds either the previous or the new complete state.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::{decimal, decode, decode_log, header, record, Log};
use super::os;
use super::resolve::{refuse_unless_regular, resolve, Target};
use super::settings::Settings;
use super::temp::{lock_path, remove_dead_writers_temp_files, take_lock, TempNames};
use super::BACKEND;
use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

pub struct FileStore {
    resource: Resource,
    /// The path as configured; it may be a symlink.
    path: PathBuf,
    /// No header line: the bytes are a custom encoding, stored as given.
    raw: bool,
    /// Log mode: loads read change records, `append` writes them.
    log: bool,
    /// Log mode: the end of the log as this store last read or wrote it, so
    /// that an append need not read the file again while it is unchanged.
    log_end: Option<LogEnd>,
    temp_names: TempNames,
    /// The identity of the empty file `open` created, until a commit or
    /// delete: a store closed before either (a construction that failed)
    /// removes it, leaving the directory as it found it.
    created: Option<(u64, u64)>,
}

/// Where a log-mode file's log ends, and the version it ends with.
#[derive(Clone, Copy)]
struct LogEnd {
    /// The file's identity: any replace changes it.
    id: (u64, u64),
    /// The file's length: past `end` by the space reserved for appends.
    len: u64,
    /// Where the last intact record (or the base) ends.
    end: u64,
    /// Where the file's data ends: past `end` when a record cut short lies there.
    data_end: u64,
    version: u64,
    appendable: bool,
}

impl LogEnd {
    /// Whether `file` still ends its log here: the same file and length,
    /// and no byte written at `end` (every append writes its record tag
    /// there, and appends are made under the lock file's lock).
    fn still_holds(&self, file: &File, id: (u64, u64), len: u64) -> std::io::Result<bool> {
        if self.id != id || self.len != len {
            return Ok(false);
        }
        Ok(self.end == len || os::byte_at(file, self.end)? == Some(0))
    }
}

/// The space reserved after a log's end when an append would pass the
/// file's length: an eighth of the log so far, within these bounds.
const MIN_RESERVE: u64 = 64 * 1024;
const MAX_RESERVE: u64 = 64 * 1024 * 1024;

impl FileStore {
    /// Opens `path` from the config. The (target's) directory must exist; a
    /// missing file is created empty (empty means "nothing stored"). A path
    /// that is, or links to, anything but a regular file is an error and is
    /// left untouched.
    pub fn open(config: &Config) -> Result<FileStore, StoreError> {
        let Settings { path, raw, log } = config.settings()?;
        let path = PathBuf::from(path);
        let resource = Resource { backend: BACKEND, name: path.display().to_string() };
        if path.file_name().is_none() {
            return Err(StoreError::config(BACKEND, format!("`{}` does not name a file", path.display())));
        }
        if raw && log {
            return Err(StoreError::config(BACKEND, "log mode needs duratom's EDN encoding; a custom `:rw` cannot use it"));
        }
        let mut store = FileStore { resource, path, raw, log, log_end: None, temp_names: TempNames::new(), created: None };
        let target = store.target("opening")?;
        if !target.dir.is_dir() {
            let why = format!("{} directory {} does not exist", target.whose("parent"), target.dir.display());
            return Err(StoreError::backend(&store.resource, "opening", why));
        }
        let (file, created) = match os::no_follow_no_block(OpenOptions::new().create_new(true).append(true)).open(&target.file) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                (os::no_follow_no_block(OpenOptions::new().append(true)).open(&target.file), false)
            }
            other => (other, true),
        };
        let file = file.map_err(|e| StoreError::io(&store.resource, "creating the file", e))?;
        let meta = file.metadata().map_err(|e| StoreError::io(&store.resource, "examining the file", e))?;
        refuse_unless_regular(&store.resource, &store.path, &target.file, os::special_kind(&meta), "opening")?;
        if created {
            store.created = Some(os::file_id(&file).map_err(|e| StoreError::io(&store.resource, "examining the file", e))?);
        }
        remove_dead_writers_temp_files(&target);
        Ok(store)
    }

    fn target(&self, op: &str) -> Result<Target, StoreError> {
        resolve(&self.resource, &self.path, op)
    }

    /// The target opened for reading, or `None` when there is no file.
    fn open_for_reading(&self, target: &Target, op: &str) -> Result<Option<File>, StoreError> {
        let file = match os::no_follow_no_block(OpenOptions::new().read(true)).open(&target.file) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&self.resource, op, e)),
        };
        let meta = file.metadata().map_err(|e| StoreError::io(&self.resource, op, e))?;
        refuse_unless_regular(&self.resource, &self.path, &target.file, os::special_kind(&meta), op)?;
        Ok(Some(file))
    }

    /// What the target holds: `None` when there is no file or it is empty,
    /// else the version and body, checked as `load` checks them (length and
    /// checksum), so a damaged file is Corrupt, naming it.
    fn read_stored(&mut self, target: &Target, op: &str) -> Result<Option<Stored>, StoreError> {
        let Some(mut file) = self.open_for_reading(target, op)? else { return Ok(None) };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| StoreError::io(&self.resource, op, e))?;
        if self.log {
            let id = os::file_id(&file).map_err(|e| StoreError::io(&self.resource, op, e))?;
            return Ok(self.read_log(target, id, bytes)?.map(|(log, mut bytes)| {
                bytes.truncate(log.end);
                bytes.drain(..log.start);
                Stored { bytes, version: Version(log.version.to_string()) }
            }));
        }
        if self.raw {
            return Ok((!bytes.is_empty()).then(|| Stored { version: Version::of_content(&bytes), bytes }));
        }
        let decoded = decode(bytes).map_err(|detail| target.corrupt(&self.resource, detail))?;
        Ok(decoded.map(|(count, body)| Stored { bytes: body, version: Version(count.to_string()) }))
    }

    /// Reads a log-mode file's `bytes` (all of the file whose identity is
    /// `id`) and remembers where its log ends. Damage is Corrupt, naming the
    /// offset.
    fn read_log(&mut self, target: &Target, id: (u64, u64), bytes: Vec<u8>) -> Result<Option<(Log, Vec<u8>)>, StoreError> {
        match decode_log(&bytes) {
            Ok(Some(log)) => {
                self.log_end = Some(LogEnd {
                    id,
                    len: bytes.len() as u64,
                    end: log.end as u64,
                    data_end: log.data_end as u64,
                    version: log.version,
                    appendable: log.appendable,
                });
                Ok(Some((log, bytes)))
            }
            Ok(None) => {
                self.log_end = None;
                Ok(None)
            }
            Err(d) => Err(target.corrupt(&self.resource, format!("damaged at byte offset {}: {}; the file is left as it is", d.offset, d.detail))),
        }
    }

    /// Appends `payload` as the record after version `after`, under the lock
    /// file's lock. A record cut short at the end (a crash) is cut off first.
    fn append_locked(&mut self, target: &Target, payload: &[u8], after: &Version) -> Result<Version, StoreError> {
        let r = &self.resource;
        let file = os::no_follow_no_block(OpenOptions::new().read(true).write(true))
            .open(&target.file)
            .map_err(|e| StoreError::io(r, "opening the file to append", e))?;
        // Not `metadata()`: see `os::Brief`.
        let (meta, id) = os::brief_and_id_of_file(&file).map_err(|e| StoreError::io(r, "examining the file", e))?;
        refuse_unless_regular(r, &self.path, &target.file, meta.special, "appending")?;
        let cached = match self.log_end {
            Some(c) if c.still_holds(&file, id, meta.len).map_err(|e| StoreError::io(r, "reading the log", e))? => Some(c),
            _ => None,
        };
        let end = match cached {
            Some(c) => c,
            None => {
                let mut bytes = Vec::new();
                // From the start: on Windows `byte_at` moves the file's cursor.
                (&file).seek(SeekFrom::Start(0)).and_then(|_| (&file).read_to_end(&mut bytes)).map_err(|e| StoreError::io(r, "reading the log", e))?;
                if self.read_log(target, id, bytes)?.is_none() {
                    return Err(StoreError::Conflict { resource: self.resource.clone() });
                }
                self.log_end.expect("read_log remembers the end")
            }
        };
        // Records follow only a base with a v2 header; the caller writes a
        // full state otherwise.
        if !end.appendable || Version(end.version.to_string()) != *after {
            return Err(StoreError::Conflict { resource: self.resource.clone() });
        }
        let r = &self.resource;
        let at = end.end;
        let mut len = end.len;
        self.log_end = None; // unknown until the append is durable
        if end.data_end > at {
            file.set_len(at).map_err(|e| StoreError::io(r, "cutting off a record a crash cut short", e))?;
            len = at;
        }
        let version = end.version + 1;
        let bytes = record(version, payload);
        let new_end = at + bytes.len() as u64;
        if new_end > len {
            let more = new_end - len + (new_end / 8).clamp(MIN_RESERVE, MAX_RESERVE);
            // Without the space (another system, a full disk), the write
            // extends the file as it goes, and says so when it cannot.
            if os::reserve(&file, len, more).is_ok() {
                len += more;
            }
        }
        if let Err(e) = os::write_all_at(&file, &bytes, at) {
            let _ = file.set_len(at); // a partial record would be a torn tail anyway
            return Err(StoreError::io(r, "appending a change record", e));
        }
        // Written: should the fdatasync fail, the record may still reach the disk.
        file.sync_data().map_err(|e| StoreError::outcome_unknown(r, "fdatasync after appending a change record", e))?;
        let len = len.max(new_end);
        self.log_end = Some(LogEnd { id: end.id, len, end: new_end, data_end: new_end, version, appendable: true });
        Ok(Version(version.to_string()))
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

    /// Writes `bytes` (after a header with `count`) to a temp file and renames
    /// it over the target. A failure after the rename is OutcomeUnknown: the
    /// state may be stored, and the caller's next look at storage learns it.
    fn write_durably(&mut self, target: &Target, bytes: &[u8], count: u64) -> Result<Version, StoreError> {
        self.created = None;
        self.log_end = None; // the file is replaced
        let (file, temp) = self.temp_names.create(&self.resource, target)?;
        let result = self.fill_and_rename(file, &temp, target, bytes, count);
        if result.is_err() {
            let _ = fs::remove_file(&temp); // best effort: the error says what went wrong
        }
        result.map(|()| self.version_of(count, bytes))
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
        let dir = os::open_dir(&target.dir).map_err(|e| StoreError::io(r, format!("opening directory {}", target.dir.display()), e))?;
        if !os::dir_holds(&dir, &target.dir, temp, &file) {
            let why = format!("the directory {} was moved or replaced during the commit; nothing was replaced", target.dir.display());
            return Err(StoreError::backend(r, "writing", why));
        }
        // A failed rename changed nothing: a plain failure.
        os::rename_over(temp, &target.file).map_err(|e| StoreError::io(r, "renaming temp file over the target", e))?;
        drop(file); // releases the temp file's lock, now that the name is gone
        // The file holds the new state now. Should what follows fail, it may
        // not survive a crash, and the caller must not take it as not written.
        after_rename(&target.dir)
            .and_then(|()| os::sync_dir(&dir))
            .map_err(|e| StoreError::outcome_unknown(r, format!("fsync of directory {} after the rename", target.dir.display()), e))
    }
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
    pub(super) static AFTER_RENAME: std::cell::Cell<Option<fn(&Path) -> std::io::Result<()>>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn after_rename(dir: &Path) -> std::io::Result<()> {
    AFTER_RENAME.with(|f| f.get().map_or(Ok(()), |f| f(dir)))
}

/// Whether `path` names the empty regular file with identity `created`.
fn is_created_empty(path: &Path, created: (u64, u64)) -> bool {
    let Ok(file) = os::no_follow_no_block(OpenOptions::new().read(true)).open(path) else { return false };
    file.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) && os::file_id(&file).is_ok_and(|id| id == created)
}

impl Drop for FileStore {
    /// Removes the file `open` created when nothing was committed since and
    /// it is still that empty file (a construction that failed), leaving the
    /// path as the construction found it.
    ///
    /// Another process may write the path meanwhile. Conditional writers are
    /// held off by the lock file's lock, taken when the lock file exists (it
    /// is not created here, so nothing is left behind). Every writer replaces
    /// the file by a rename and none writes into an empty one, so the file is
    /// moved to a temp name of this store first (atomic) and removed only if
    /// what moved is the empty file created; another writer's file, renamed
    /// over it just before, is put back under its name.
    fn drop(&mut self) {
        let Some(created) = self.created.take() else { return };
        let Ok(target) = self.target("closing") else { return };
        let _lock = OpenOptions::new().write(true).open(lock_path(&target)).ok().filter(|f| os::lock(f).is_ok());
        if !is_created_empty(&target.file, created) {
            return;
        }
        crate::store::before_created_file_removal();
        let moved = self.temp_names.next(&target);
        if fs::rename(&target.file, &moved).is_err() {
            return;
        }
        if !is_created_empty(&moved, created) {
            // Fails when a newer file took the name meanwhile: what moved
            // is then an older state, replaced as a rename would have.
            let _ = fs::hard_link(&moved, &target.file);
        }
        let _ = fs::remove_file(&moved);
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
                let _lock = take_lock(&self.resource, &target)?; // released when dropped, also on error
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

    fn append(&mut self, record: &[u8], after: &Version) -> Result<Version, StoreError> {
        if !self.log {
            return Err(StoreError::backend(&self.resource, "appending", "the file is not in log mode"));
        }
        let target = self.target("appending")?;
        let _lock = take_lock(&self.resource, &target)?; // released when dropped, also on error
        self.append_locked(&target, record, after)
    }

    /// Removes the file the path leads to (a symlink stays, dangling: the
    /// next store there writes through it again) and the lock file beside it.
    fn delete(&mut self) -> Result<(), StoreError> {
        self.created = None;
        self.log_end = None;
        let target = self.target("deleting")?;
        // Opened before the removal, as for a commit's rename: its fsync
        // reaches the directory the removal happened in, even if it moves.
        let dir = os::open_dir(&target.dir).map_err(|e| StoreError::io(&self.resource, format!("opening directory {}", target.dir.display()), e))?;
        match fs::remove_file(&target.file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&self.resource, "deleting", e)),
        }
        let _ = fs::remove_file(lock_path(&target)); // only exists after a conditional commit
        os::sync_dir(&dir).map_err(|e| StoreError::io(&self.resource, "fsync of directory after delete", e))
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}
