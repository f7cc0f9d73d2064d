//! Path resolution: where the state lives now.
//!
//! A symlinked path (or a chain of links) is written through: the bytes go
//! to the chain's final target, the temp file sits beside that target (so the
//! rename stays atomic) and the link stays a link. The chain is followed at
//! every operation, so a link pointed elsewhere is followed there.
//!
//! A path (or link target) that is a FIFO, device, socket or directory is
//! refused, and never opened: opening a FIFO would block, and replacing a
//! device would destroy it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::os;
use crate::store::{Resource, StoreError};

/// Links followed before giving up, as Linux's own limit.
const MAX_LINKS: usize = 40;

/// Where the state lives now: the final target of the configured path's
/// symlink chain (the path itself when it is no link).
pub(super) struct Target {
    pub file: PathBuf,
    pub dir: PathBuf,
    /// The target's file name, as temp-file names start with it.
    pub name: String,
    /// Permission bits of the file there now, given to its replacement.
    pub mode: Option<u32>,
    /// Reached through a symlink: messages then name the target too.
    pub linked: bool,
}

impl Target {
    /// "the" or "the symlink's target's", for messages about the target.
    pub fn whose(&self, what: &str) -> String {
        if self.linked {
            format!("the symlink's target {}: its {what}", self.file.display())
        } else {
            format!("the {what}")
        }
    }

    /// A Corrupt error: the resource names the configured path; when that is
    /// a symlink, the detail names the damaged file it leads to.
    pub fn corrupt(&self, resource: &Resource, detail: impl Into<String>) -> StoreError {
        let detail = detail.into();
        let detail = if self.linked { format!("{}: {detail}", self.whose("content")) } else { detail };
        StoreError::Corrupt { resource: resource.clone(), detail }
    }
}

/// Follows the configured `path`'s symlink chain to its end, and checks
/// that what is there (if anything) is a regular file. Reads only metadata.
pub(super) fn resolve(resource: &Resource, path: &Path, op: &str) -> Result<Target, StoreError> {
    let r = resource;
    let mut file = path.to_path_buf();
    let mut links = 0;
    let meta = loop {
        match os::brief_of_path(&file) {
            Ok(m) if m.symlink => {
                links += 1;
                if links > MAX_LINKS {
                    let why = format!("more than {MAX_LINKS} symlinks in a row from {} (a loop?)", path.display());
                    return Err(StoreError::backend(r, op, why));
                }
                let to = fs::read_link(&file).map_err(|e| StoreError::io(r, format!("reading the symlink {}", file.display()), e))?;
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
        refuse_unless_regular(r, path, &file, m.special, op)?;
    }
    let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        let why = format!("the symlink's target {} does not name a file", file.display());
        return Err(StoreError::backend(r, op, why));
    };
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let linked = file != path;
    Ok(Target { mode: meta.as_ref().map(|m| m.mode), file, dir, name, linked })
}

/// An error unless `file` (reached from the configured `path`) is a regular
/// file: `special` says what else it is (`os::special_kind`).
pub(super) fn refuse_unless_regular(resource: &Resource, path: &Path, file: &Path, special: Option<&str>, op: &str) -> Result<(), StoreError> {
    let Some(what) = special else { return Ok(()) };
    let whose = if file == path { "the path".to_string() } else { format!("the symlink's target {}", file.display()) };
    let why = format!("{whose} is {what}, not a regular file; duratom stores only in regular files and left it untouched");
    Err(StoreError::backend(resource, op, why))
}
