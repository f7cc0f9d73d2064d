//! The local-file backend.
//!
//! A commit is crash-durable: the new state goes to a temp file in the same
//! directory, which is fsynced, renamed over the target, and then the
//! directory is fsynced. Whenever the process or machine dies, the target
//! holds either the previous or the new complete state.
//!
//! EDN files start with one comment line that EDN readers skip:
//!
//! ```text
//! ;duratom/v1 version=7 length=1234 crc32=0a1b2c3d
//! {:the "value"}
//! ```
//!
//! `length` and `crc32` cover the bytes after the header line and detect a
//! damaged file; `version` counts commits and is the store's version token.
//! Files without the line (written by the original library, or by hand) load
//! as version 0. With `raw=true` (a custom `:rw` encoding such as nippy) no
//! header is written, since the user's reader expects the file as it wrote it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

const HEADER_TAG: &[u8] = b";duratom/v1 ";

pub struct FileStore {
    resource: Resource,
    path: PathBuf,
    dir: PathBuf,
    /// No header line: the bytes are a custom encoding, stored as given.
    raw: bool,
    /// The version last loaded or committed by this store.
    version: u64,
    /// Makes temp-file names unique within this process.
    temp_counter: u64,
}

impl FileStore {
    /// Opens `path` from the config. The parent directory must exist; a
    /// missing file is created empty (empty means "nothing stored").
    pub fn open(config: &Config) -> Result<FileStore, StoreError> {
        let path = PathBuf::from(config.required("path")?);
        let resource = Resource { backend: "local-file", name: path.display().to_string() };
        let raw = config.flag("raw", false)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.file_name().is_none() {
            return Err(StoreError::config("local-file", format!("`{}` does not name a file", path.display())));
        }
        if !dir.is_dir() {
            let why = format!("parent directory {} does not exist", dir.display());
            return Err(StoreError::backend(&resource, "opening", why));
        }
        if path.is_dir() {
            return Err(StoreError::backend(&resource, "opening", "the path is a directory, not a file"));
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&resource, "creating the file", e))?;
        let store = FileStore { resource, path, dir, raw, version: 0, temp_counter: 0 };
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// Removes temp files that a process killed mid-commit left behind
    /// (`.<name>.<pid>-<n>.tmp` whose pid is no longer running). A live
    /// process's temp file may be a commit in flight, so it is left alone.
    fn remove_stale_temp_files(&self) {
        let name = self.path.file_name().expect("checked at open").to_string_lossy().into_owned();
        let prefix = format!(".{name}.");
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(middle) = file_name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else {
                continue;
            };
            let Some(pid) = middle.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            // kill(pid, 0) probes without sending: ESRCH means no such process.
            let gone = unsafe { libc::kill(pid, 0) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = fs::remove_file(entry.path()); // best effort: it is garbage either way
            }
        }
    }

    /// The version stored on disk now, reading only the header line.
    fn stored_version(&self) -> Result<Option<u64>, StoreError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&self.resource, "reading the header", e)),
        };
        let mut head = [0u8; 128];
        let mut n = 0;
        while n < head.len() {
            match file.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io(&self.resource, "reading the header", e)),
            }
        }
        if n == 0 {
            return Ok(None);
        }
        match parse_header(&head[..n]) {
            Some(h) => Ok(Some(h.version)),
            None if self.raw || !head.starts_with(HEADER_TAG) => Ok(Some(0)),
            None => Err(StoreError::Corrupt { resource: self.resource.clone(), detail: "unreadable header line".into() }),
        }
    }

    fn write_durably(&mut self, bytes: &[u8], version: u64) -> Result<(), StoreError> {
        self.temp_counter += 1;
        let name = self.path.file_name().expect("checked at open").to_string_lossy();
        let temp = self.dir.join(format!(".{name}.{}-{}.tmp", std::process::id(), self.temp_counter));
        let result = self.write_temp_and_rename(&temp, bytes, version);
        if result.is_err() {
            let _ = fs::remove_file(&temp); // best effort: the error says what went wrong
        }
        result
    }

    fn write_temp_and_rename(&self, temp: &Path, bytes: &[u8], version: u64) -> Result<(), StoreError> {
        let r = &self.resource;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(|e| StoreError::io(r, format!("creating temp file {}", temp.display()), e))?;
        if !self.raw {
            let header = format!(
                ";duratom/v1 version={version} length={} crc32={:08x}\n",
                bytes.len(),
                crc32fast::hash(bytes)
            );
            file.write_all(header.as_bytes()).map_err(|e| StoreError::io(r, "writing temp file", e))?;
        }
        file.write_all(bytes).map_err(|e| StoreError::io(r, "writing temp file", e))?;
        file.sync_data().map_err(|e| StoreError::io(r, "fsync of temp file", e))?;
        drop(file);
        fs::rename(temp, &self.path).map_err(|e| StoreError::io(r, "renaming temp file over the target", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(r, format!("fsync of directory {}", self.dir.display()), e))
    }

    /// Takes the cross-process lock on `<path>.lock`; the OS drops it if the
    /// holder dies, so a crashed process never blocks the others.
    fn lock_file(&self) -> Result<File, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&self.resource, "opening the lock file", e))?;
        file.lock().map_err(|e| StoreError::io(&self.resource, "taking the lock file", e))?;
        Ok(file)
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&self.resource, "reading", e)),
        };
        if bytes.is_empty() {
            self.version = 0;
            return Ok(None);
        }
        let (version, body) = if self.raw || !bytes.starts_with(HEADER_TAG) {
            (0, bytes)
        } else {
            let header = parse_header(&bytes).ok_or_else(|| StoreError::Corrupt {
                resource: self.resource.clone(),
                detail: "unreadable header line".into(),
            })?;
            let body = &bytes[header.body_start..];
            if body.len() != header.length {
                return Err(StoreError::Corrupt {
                    resource: self.resource.clone(),
                    detail: format!("header says {} bytes, file holds {}", header.length, body.len()),
                });
            }
            let crc = crc32fast::hash(body);
            if crc != header.crc32 {
                return Err(StoreError::Corrupt {
                    resource: self.resource.clone(),
                    detail: format!("checksum {crc:08x} does not match the header's {:08x}", header.crc32),
                });
            }
            (header.version, body.to_vec())
        };
        self.version = version;
        Ok(Some(Stored { bytes: body, version: Version(version.to_string()) }))
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        let next = match expect {
            Expect::Anything => {
                let next = self.version + 1;
                self.write_durably(bytes, next)?;
                next
            }
            Expect::Nothing | Expect::Version(_) => {
                let _lock = self.lock_file()?; // released when dropped, also on error
                let stored = self.stored_version()?;
                let holds = match (expect, stored) {
                    (Expect::Nothing, None) => true,
                    (Expect::Version(v), Some(s)) => v.0 == s.to_string(),
                    _ => false,
                };
                if !holds {
                    return Err(StoreError::Conflict { resource: self.resource.clone() });
                }
                let next = stored.unwrap_or(0) + 1;
                self.write_durably(bytes, next)?;
                next
            }
        };
        self.version = next;
        Ok(Version(next.to_string()))
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&self.resource, "deleting", e)),
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let _ = fs::remove_file(lock_path); // only exists after a conditional commit
        self.version = 0;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&self.resource, "fsync of directory after delete", e))
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}

struct Header {
    version: u64,
    length: usize,
    crc32: u32,
    body_start: usize,
}

/// Parses `;duratom/v1 version=N length=N crc32=HEX\n`; `None` if malformed.
fn parse_header(bytes: &[u8]) -> Option<Header> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[HEADER_TAG.len().min(end)..end]).ok()?;
    if !bytes.starts_with(HEADER_TAG) {
        return None;
    }
    let (mut version, mut length, mut crc32) = (None, None, None);
    for field in line.split_ascii_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "version" => version = v.parse().ok(),
            "length" => length = v.parse().ok(),
            "crc32" => crc32 = u32::from_str_radix(v, 16).ok(),
            _ => {} // fields a later version may add
        }
    }
    Some(Header { version: version?, length: length?, crc32: crc32?, body_start: end + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, name: &str) -> FileStore {
        let path = dir.join(name);
        FileStore::open(&Config::from_pairs("local-file", &[("path", path.to_str().unwrap())])).unwrap()
    }

    #[test]
    fn commit_then_load_round_trips_and_counts_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), "a.edn");
        assert!(s.load().unwrap().is_none(), "a new file holds nothing");
        let v1 = s.commit(b"{:x 1}", &Expect::Anything).unwrap();
        let v2 = s.commit("{:x \"\u{1F600}\"}".as_bytes(), &Expect::Anything).unwrap();
        assert_ne!(v1, v2);
        let got = store(dir.path(), "a.edn").load().unwrap().unwrap();
        assert_eq!(got.bytes, "{:x \"\u{1F600}\"}".as_bytes());
        assert_eq!(got.version, v2);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
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
        s.commit(b"{:x 12345}", &Expect::Anything).unwrap();
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

    #[test]
    fn temp_files_of_dead_processes_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".s.edn.999999999-1.tmp"); // no such pid
        let live = dir.path().join(format!(".s.edn.{}-7.tmp", std::process::id()));
        let other = dir.path().join(".other.edn.999999999-1.tmp");
        for p in [&dead, &live, &other] {
            fs::write(p, b"partial").unwrap();
        }
        store(dir.path(), "s.edn");
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(live.exists(), "a live writer's temp file may be in flight");
        assert!(other.exists(), "another file's temp files are not ours");
    }

    #[test]
    fn missing_parent_and_directory_paths_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/x.edn");
        let e = FileStore::open(&Config::from_pairs("local-file", &[("path", missing.to_str().unwrap())]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("nope"), "{e}");
        let e = FileStore::open(&Config::from_pairs("local-file", &[("path", dir.path().to_str().unwrap())]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
