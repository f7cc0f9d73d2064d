//! The files the store keeps beside the target: temp files (named, created
//! and locked by their writer, removed by clean-up once their writer is
//! gone) and the lock file of conditional commits.
//!
//! Temp files are named `.<name>.<pid>-<store>-<n>-<random>.tmp` and their
//! writer holds a lock on each while it writes. Where that name would pass
//! the file system's name limit, `<name>` is cut short and followed by `~`
//! and a hash of the whole name, so that any name the file system takes
//! works and every process derives the same names from it; the lock file
//! `<name>.lock` is shortened the same way. Clean-up at open removes only
//! temp files whose lock it can take: their writer closed them or died (the
//! OS releases a dead process's locks). A pid proves nothing, since pids are
//! reused.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::os;
use super::resolve::Target;
use crate::store::{Resource, StoreError};

/// Numbers the stores of this process, for temp-file names.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// Names the temp files of one store: unique among this process's stores,
/// and within the store by a counter.
pub(super) struct TempNames {
    store_id: u64,
    counter: u64,
}

impl TempNames {
    pub fn new() -> TempNames {
        TempNames { store_id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed), counter: 0 }
    }

    /// A fresh temp-file name beside the target (not created).
    pub fn next(&mut self, target: &Target) -> PathBuf {
        self.counter += 1;
        let name = format!(
            "{}{}-{}-{}-{:016x}.tmp",
            temp_prefixes(target).0,
            std::process::id(),
            self.store_id,
            self.counter,
            random_u64()
        );
        target.dir.join(name)
    }

    /// A new temp file beside the target, created and locked by this store,
    /// with the target's permission bits.
    pub fn create(&mut self, resource: &Resource, target: &Target) -> Result<(File, PathBuf), StoreError> {
        let r = resource;
        let mode = target.mode.unwrap_or(os::DEFAULT_MODE);
        for _ in 0..16 {
            let temp = self.next(target);
            // Created with the target's permission bits (less the umask), so a
            // private file never exists with wider ones, then given exactly them.
            let file = match os::with_mode(OpenOptions::new().write(true).create_new(true), mode).open(&temp) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io(r, format!("creating temp file {}", temp.display()), e)),
            };
            // Held until after the rename: clean-up removes only unlocked temp files.
            match os::try_lock(&file) {
                Ok(true) => {}
                Ok(false) => continue, // a clean-up took it first and removes it
                Err(e) => {
                    let _ = fs::remove_file(&temp);
                    return Err(StoreError::io(r, format!("locking temp file {}", temp.display()), e));
                }
            }
            // A clean-up may have locked, removed and released it before we locked it.
            if !os::names_file(&temp, &file) {
                continue;
            }
            if target.mode.is_some() {
                os::set_permission_bits(&file, mode)
                    .map_err(|e| StoreError::io(r, format!("setting permissions of temp file {}", temp.display()), e))?;
            }
            return Ok((file, temp));
        }
        let why = format!("could not create a temp file of its own in {}", target.dir.display());
        Err(StoreError::backend(r, "writing", why))
    }
}

/// The longest `<pid>-<store>-<n>-<random>.tmp` ending of a temp-file name:
/// a u32, two u64s, 16 hex digits, three dashes and `.tmp`.
const TEMP_ENDING_MAX: usize = 10 + 20 + 20 + 16 + 3 + 4;
/// The bytes of a shortened name's `~` and hash.
const HASH_MARK: usize = 1 + 16;

/// `name` cut to at most `max` bytes (at a character boundary), then `~`
/// and a hash of the whole name: one short name per long one, the same in
/// every process and build.
fn shortened(name: &str, max: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut cut = max.saturating_sub(HASH_MARK).min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{}~{hash}", &name[..cut])
}

/// The start of the target's temp-file names: `.<name>.` when every name
/// fits the file system's limit, else `.<shortened name>.`; and, for
/// clean-up, the other one (temp files an earlier build left may carry it).
fn temp_prefixes(target: &Target) -> (String, String) {
    let full = format!(".{}.", target.name);
    let budget = os::name_max(&target.dir).saturating_sub(TEMP_ENDING_MAX);
    let short = format!(".{}.", shortened(&target.name, budget.saturating_sub(2)));
    if full.len() <= budget { (full, short) } else { (short, full) }
}

/// Not cryptographic; with the pid and store id it keeps temp names apart
/// across processes that reuse a crashed process's pid.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Removes the target's temp files whose writer is provably gone: those
/// whose lock can be taken. A live writer holds its lock from just after
/// creating the file until after renaming it; one that finds its fresh file
/// locked or removed by this clean-up starts over with a new name.
pub(super) fn remove_dead_writers_temp_files(target: &Target) {
    let (prefix, other) = temp_prefixes(target);
    let Ok(entries) = fs::read_dir(&target.dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rest = name.strip_prefix(&prefix).or_else(|| name.strip_prefix(&other));
        let Some(middle) = rest.and_then(|r| r.strip_suffix(".tmp")) else { continue };
        if middle.is_empty() || !middle.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            continue; // not a name we give
        }
        let path = entry.path();
        let Ok(file) = os::open_for_locking(&path) else { continue };
        if !file.metadata().is_ok_and(|m| m.is_file()) || !os::try_lock(&file).unwrap_or(false) {
            continue; // not ours, or its writer is alive
        }
        // It may have been renamed over the target while we opened it.
        if os::names_file(&path, &file) {
            let _ = fs::remove_file(&path); // best effort: it is garbage either way
        }
    }
}

/// The lock file of conditional commits: `<target>.lock`, its name
/// shortened when that would pass the file system's limit.
pub(super) fn lock_path(target: &Target) -> PathBuf {
    let max = os::name_max(&target.dir);
    if target.name.len() + ".lock".len() <= max {
        let mut path = target.file.clone().into_os_string();
        path.push(".lock");
        PathBuf::from(path)
    } else {
        target.dir.join(format!("{}.lock", shortened(&target.name, max - ".lock".len())))
    }
}

/// Takes the cross-process lock on the target's lock file; the OS drops it
/// if the holder dies, so a crashed process never blocks the others.
pub(super) fn take_lock(resource: &Resource, target: &Target) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(target))
        .map_err(|e| StoreError::io(resource, "opening the lock file", e))?;
    os::lock(&file).map_err(|e| StoreError::io(resource, "taking the lock file", e))?;
    Ok(file)
}

