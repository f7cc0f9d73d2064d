//! The file store on real files: round trips, versions, damage, symlinks,
//! special files, temp-file clean-up, and property tests of the format.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
#[cfg(unix)]
use std::sync::mpsc;
#[cfg(unix)]
use std::time::Duration;

use super::format::{header, lead_of, v1_file, Lead, HEADER_TAG, HEADER_TAG_V1};
use super::store::AFTER_RENAME;
use super::FileStore;
use crate::config::Config;
use crate::store::{Expect, Store, StoreError, Stored, Version};

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

#[cfg(unix)]
fn c_path(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A symbolic link at `link` to the file `to`: Windows has file symlinks
/// too (the kind the backend follows and keeps).
fn symlink(to: impl AsRef<Path>, link: impl AsRef<Path>) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(to, link).unwrap();
    #[cfg(windows)]
    std::os::windows::fs::symlink_file(to, link).unwrap();
}

/// Whether this system makes symlinks in `dir`. Unix always does; Windows
/// only for an account with the symlink privilege (or in developer mode),
/// and Wine 8.0's CreateSymbolicLinkW reports success but makes nothing.
/// Where it does not, the calling test says so on stderr (the release's
/// proof counts these lines) and returns, since no user can have a symlink
/// there either.
fn symlinks_work(dir: &Path, test: &str) -> bool {
    let link = dir.join(".symlink-probe");
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink("x", &link).is_ok();
    #[cfg(windows)]
    let made = std::os::windows::fs::symlink_file("x", &link).is_ok();
    let works = made && fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink());
    let _ = fs::remove_file(&link);
    if !works {
        eprintln!("NOT RUN: {test}: this system makes no symlinks");
    }
    works
}

/// Opens a store at `path` on another thread: a bug that opened a FIFO
/// would block for ever, and must fail the test instead.
#[cfg(unix)]
fn open_within_10s(path: &Path) -> Result<FileStore, StoreError> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(open_at(&path));
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("opening the store blocked (did it open a FIFO?)")
}


crate::store_contract_tests!(|dir: &Path, name: &str| {
    Config::from_pairs("local-file", &[("path", dir.join(format!("{name}.edn")).to_str().unwrap())])
});

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
    if !symlinks_work(dir.path(), "a_symlink_chain_is_written_through_and_stays_a_chain") {
        return;
    }
    let real_dir = dir.path().join("real");
    fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("state.edn");
    fs::write(&real, b"{:old true}").unwrap();
    #[cfg(unix)]
    fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    // link -> middle (absolute) -> real/state.edn (relative to the middle link's directory)
    let middle = dir.path().join("middle.edn");
    symlink(Path::new("real").join("state.edn"), &middle);
    let link = dir.path().join("link.edn");
    symlink(&middle, &link);

    let mut s = open_at(&link).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"{:old true}", "loads through the chain");
    let v = s.commit(b"{:new 1}", &Expect::Anything { after: Some(Version("0".into())) }).unwrap();
    let v = s.commit(b"{:new 2}", &Expect::Anything { after: Some(v) }).unwrap();
    s.commit(b"{:new 3}", &Expect::Version(v)).unwrap();

    for l in [&link, &middle] {
        assert!(fs::symlink_metadata(l).unwrap().file_type().is_symlink(), "{} is still a link", l.display());
    }
    assert_eq!(fs::read_link(&middle).unwrap(), Path::new("real").join("state.edn"));
    let meta = fs::symlink_metadata(&real).unwrap();
    assert!(meta.is_file());
    #[cfg(unix)]
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o640, "the target keeps its permission bits");
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
    if !symlinks_work(dir.path(), "a_symlink_loop_is_a_named_error") {
        return;
    }
    let a = dir.path().join("a.edn");
    let b = dir.path().join("b.edn");
    symlink(&b, &a);
    symlink(&a, &b);
    let e = open_at(&a).err().unwrap();
    assert!(e.to_string().contains("symlinks in a row") && e.to_string().contains("a.edn"), "{e}");
}

/// Every kind of special file, directly and behind a symlink: refused at
/// open, left as it was, and nothing created beside it. (Windows has no
/// FIFOs, devices or sockets in the file system.)
#[cfg(unix)]
#[test]
fn fifos_devices_and_sockets_are_refused_and_untouched() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
    symlink(&device, &link);

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

#[cfg(unix)]
#[test]
fn a_file_swapped_for_a_fifo_after_open_is_refused_not_read() {
    use std::os::unix::fs::FileTypeExt;
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
    if !symlinks_work(dir.path(), "missing_parent_and_directory_paths_are_named_errors (its dangling symlink)") {
        return;
    }
    let dangling = dir.path().join("dangling.edn");
    symlink(dir.path().join("gone/x.edn"), &dangling);
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

    AFTER_RENAME.with(|f| f.set(Some(|_| Err(std::io::Error::other("an I/O error")))));
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
    if !symlinks_work(dir.path(), "a_damaged_symlink_target_is_named") {
        return;
    }
    let real = dir.path().join("real.edn");
    let link = dir.path().join("link.edn");
    symlink(&real, &link);
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


/// Property tests: whatever bytes the file holds, loading it never panics
/// and never yields a value other than one that was stored.
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

/// A name of 255 bytes, the usual file-system limit: the temp and lock
/// files beside it get shortened names, so it opens, commits (both ways),
/// loads, and a dead writer's temp file is still cleaned up.
#[test]
fn a_name_of_255_bytes_commits_conditionally_and_cleans_up() {
    use super::resolve::resolve;
    use super::temp::TempNames;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.edn", "\u{e9}".repeat(125) + "x");
    assert_eq!(name.len(), 255);
    let path = dir.path().join(&name);
    let mut s = open_at(&path).unwrap();
    let v1 = s.commit(b"{:n 1}", &Expect::Anything { after: None }).unwrap();
    let v2 = s.commit(b"{:n 2}", &Expect::Version(v1)).unwrap();
    assert_eq!(open_at(&path).unwrap().load().unwrap().unwrap().bytes, b"{:n 2}");
    assert!(matches!(s.commit(b"{:n 3}", &Expect::Nothing), Err(StoreError::Conflict { .. })));

    // A writer that died after creating its temp file: its lock is gone.
    let target = resolve(s.resource(), &path, "test").unwrap();
    let (file, temp) = TempNames::new().create(s.resource(), &target).unwrap();
    drop(file);
    let temp_name = temp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(temp_name.len() <= 255 && temp_name.ends_with(".tmp"), "{temp_name}");
    let names = names_in(dir.path());
    assert_eq!(names.len(), 3, "the file, its lock file and the dead writer's temp file: {names:?}");
    assert!(names.iter().all(|n| n.len() <= 255));
    open_at(&path).unwrap();
    let names = names_in(dir.path());
    assert!(!names.contains(&temp_name), "the dead writer's temp file is removed: {names:?}");
    let lock = names.iter().find(|n| **n != name).unwrap();
    assert!(lock.ends_with(".lock") && lock.contains('~'), "{lock}");
    s.commit(b"{:n 3}", &Expect::Version(v2)).unwrap();
    s.delete().unwrap();
    assert!(names_in(dir.path()).is_empty(), "delete removes the file and its lock file");
}

/// A folder with a non-ASCII name (a user profile such as `Zoë`) and a
/// path longer than Windows' classic limit of 260 characters: the file
/// opens, commits both ways, loads, a dead writer's temp file is cleaned up,
/// and delete removes the file and its lock file.
#[test]
fn a_non_ascii_folder_and_a_path_past_260_characters_work() {
    use super::resolve::resolve;
    use super::temp::TempNames;
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().join("Zo\u{eb}");
    while deep.as_os_str().len() < 300 {
        deep = deep.join("\u{fc}mlaut-folder-0123456789");
    }
    fs::create_dir_all(&deep).unwrap();
    let path = deep.join("\u{e9}tat.edn");
    assert!(path.to_string_lossy().chars().count() > 260, "{}", path.display());
    let mut s = open_at(&path).unwrap();
    let v1 = s.commit(b"{:n 1}", &Expect::Nothing).unwrap();
    let v2 = s.commit(b"{:n 2}", &Expect::Version(v1)).unwrap();
    let v3 = s.commit(b"{:n 3}", &Expect::Anything { after: Some(v2) }).unwrap();
    let stored = open_at(&path).unwrap().load().unwrap().unwrap();
    assert_eq!((stored.bytes, stored.version), (b"{:n 3}".to_vec(), v3));

    let target = resolve(s.resource(), &path, "test").unwrap();
    let (file, temp) = TempNames::new().create(s.resource(), &target).unwrap();
    drop(file); // as when its writer dies
    open_at(&path).unwrap();
    assert!(!temp.exists(), "the dead writer's temp file is removed");
    s.delete().unwrap();
    assert!(names_in(&deep).is_empty(), "delete removes the file and its lock file: {:?}", names_in(&deep));
}

fn open_log(path: &Path) -> FileStore {
    FileStore::open(&Config::from_pairs("local-file", &[("path", path.to_str().unwrap()), ("log", "true")])).unwrap()
}

/// A log-mode file's bytes without the zeros after its data (space reserved
/// for appends).
fn log_data(path: &Path) -> Vec<u8> {
    let mut bytes = fs::read(path).unwrap();
    let data_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.truncate(data_end);
    bytes
}

/// Log mode: a full base, then appended records; a load gives the base and
/// the records as EDN forms under the last record's version, and an append
/// after a stale version is a conflict that writes nothing.
#[test]
fn log_mode_appends_records_after_the_base_and_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.edn");
    let mut s = open_log(&path);
    let v1 = s.commit(b"{:a 1}", &Expect::Anything { after: None }).unwrap();
    let v2 = s.append(b"[[:assoc [] :b 2]]", &v1).unwrap();
    let v3 = s.append(b"[[:assoc [] :c 3]]", &v2).unwrap();
    assert_eq!(v3, Version("3".into()));
    let got = open_log(&path).load().unwrap().unwrap();
    assert_eq!(got.version, v3);
    let text = String::from_utf8(got.bytes).unwrap();
    assert!(text.starts_with("{:a 1};duratom/r version=2 length=18 crc32=") && text.ends_with("\n[[:assoc [] :c 3]]\n"), "{text}");
    assert!(matches!(s.append(b"[]", &v2), Err(StoreError::Conflict { .. })), "a stale version");
    // Another store on the file appends after this one's: this one reads the new end.
    let v4 = open_log(&path).append(b"[[:dissoc [] :a]]", &v3).unwrap();
    assert!(matches!(s.append(b"[]", &v3), Err(StoreError::Conflict { .. })));
    s.append(b"[[:assoc [] :d 4]]", &v4).unwrap();
    // A full commit replaces base and records.
    let v6 = s.commit(b"{:z 0}", &Expect::Version(Version("5".into()))).unwrap();
    assert_eq!((v6.clone(), fs::read_to_string(&path).unwrap()), (Version("6".into()), String::from_utf8([header(6, b"{:z 0}"), b"{:z 0}".to_vec()].concat()).unwrap()));
    // A store not in log mode refuses a file with records, saying why.
    s.append(b"[[:assoc [] :y 1]]", &v6).unwrap();
    let e = open_at(&path).unwrap().load().unwrap_err();
    assert!(e.to_string().contains("log mode"), "{e}");
}

/// A record cut short by a crash, at any length, or zero-filled, is not
/// acknowledged: the load ends before it and the next append replaces it.
/// Damage anywhere else is Corrupt, naming the byte offset, and the file
/// stays as it was.
#[test]
fn log_mode_ignores_a_torn_tail_and_names_the_offset_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn.edn");
    let mut s = open_log(&path);
    let v1 = s.commit(b"{:a 1}", &Expect::Anything { after: None }).unwrap();
    let base_len = fs::read(&path).unwrap().len();
    let v2 = s.append(b"[[:assoc [] :b 2]]", &v1).unwrap();
    let good = log_data(&path);
    let v3 = s.append(b"[[:assoc [] :c 3]]", &v2).unwrap();
    let full = log_data(&path);
    for cut in good.len()..full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        let got = open_log(&path).load().unwrap().unwrap();
        assert_eq!(got.version, v2, "cut at {cut}");
    }
    let mut zeroed = full.clone();
    zeroed[good.len() + 20..].fill(0);
    fs::write(&path, &zeroed).unwrap();
    let mut t = open_log(&path);
    assert_eq!(t.load().unwrap().unwrap().version, v2, "a zero-filled last record");
    assert_eq!(t.append(b"[[:assoc [] :c 33]]", &v2).unwrap(), v3, "the torn record is replaced");
    assert!(String::from_utf8(log_data(&path)).unwrap().ends_with(":c 33]]\n"));
    // One damaged byte in the first record, with an intact record after it.
    fs::write(&path, &full).unwrap();
    let mut damaged = full.clone();
    let at = good.len() - 4;
    damaged[at] = b'7';
    fs::write(&path, &damaged).unwrap();
    let e = open_log(&path).load().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Corrupt { .. }) && msg.contains(&format!("byte offset {base_len}:")) && msg.contains("torn.edn"), "{msg}");
    assert_eq!(fs::read(&path).unwrap(), damaged, "left as it was");
}

/// Appends go into space reserved ahead of them (where the system has
/// `fallocate`), which loads as nothing; a record cut short inside that
/// space is ignored and cut off by the next append, and damage to the last
/// record before it is still damage, not a torn tail.
#[test]
fn log_mode_appends_into_reserved_space_and_reads_its_zeros_as_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reserved.edn");
    let mut s = open_log(&path);
    let v1 = s.commit(b"{:a 1}", &Expect::Anything { after: None }).unwrap();
    let v2 = s.append(b"[[:assoc [] :b 2]]", &v1).unwrap();
    let data = log_data(&path);
    let reserved = fs::metadata(&path).unwrap().len();
    let v3 = s.append(b"[[:assoc [] :c 3]]", &v2).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    if cfg!(target_os = "linux") {
        assert!(reserved >= data.len() as u64 + 64 * 1024, "space reserved: {reserved} bytes for {} of data", data.len());
        assert_eq!(len, reserved, "the next append lands in the reserved space");
    }
    let full = log_data(&path);
    assert_eq!(open_log(&path).load().unwrap().unwrap().version, v3);

    // Another store's append into the space is seen by this one.
    let v4 = open_log(&path).append(b"[[:assoc [] :d 4]]", &v3).unwrap();
    assert!(matches!(s.append(b"[]", &v3), Err(StoreError::Conflict { .. })), "appending after a version another store moved past");
    let got = s.load().unwrap().unwrap();
    let text = String::from_utf8(got.bytes).unwrap();
    assert!(got.version == v4 && text.ends_with(":d 4]]\n"), "{text}");

    // The last record cut short, with the reserved zeros after it.
    let mut torn = full.clone();
    torn.truncate(full.len() - 7);
    torn.resize(len as usize, 0);
    fs::write(&path, &torn).unwrap();
    let mut t = open_log(&path);
    assert_eq!(t.load().unwrap().unwrap().version, v2, "the cut-short record is not loaded");
    assert_eq!(t.append(b"[[:assoc [] :e 5]]", &v2).unwrap(), v3);
    let text = String::from_utf8(open_log(&path).load().unwrap().unwrap().bytes).unwrap();
    assert!(!text.contains(":c 3") && text.ends_with(":e 5]]\n"), "the cut-short record is replaced: {text}");

    // One byte of the last record damaged, zeros after it: damage, named.
    let mut damaged = full.clone();
    let at = full.len() - 5;
    damaged[at] = b'7';
    damaged.resize(len as usize, 0);
    fs::write(&path, &damaged).unwrap();
    let e = open_log(&path).load().unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }) && e.to_string().contains(&format!("byte offset {}:", data.len())), "{e}");
    assert_eq!(fs::read(&path).unwrap(), damaged, "left as it was");
}

#[test]
fn a_failed_construction_removes_the_file_it_created_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.edn");
    drop(open_at(&path).unwrap());
    assert_eq!(names_in(dir.path()), Vec::<String>::new(), "the created file is removed, nothing left beside it");

    // A file that was there is never removed, even empty.
    fs::write(&path, b"").unwrap();
    drop(open_at(&path).unwrap());
    assert_eq!(names_in(dir.path()), vec!["new.edn".to_string()]);
}

#[test]
fn a_commit_racing_a_failed_constructions_clean_up_is_kept() {
    // Another store commits (a rename over the path) right after the
    // clean-up found the path still holding the empty file it created.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raced.edn");
    let failed = open_at(&path).unwrap();
    let mut other = open_at(&path).unwrap();
    let raced = path.clone();
    crate::store::BEFORE_REMOVAL.with(|f| {
        *f.borrow_mut() = Some(Box::new(move || {
            let mut other = open_at(&raced).unwrap();
            other.commit(b"{:other 1}", &Expect::Anything { after: None }).unwrap();
        }))
    });
    drop(failed);
    assert_eq!(other.load().unwrap().map(|s| s.bytes), Some(b"{:other 1}".to_vec()), "the other store's commit is kept");
    assert_eq!(names_in(dir.path()), vec!["raced.edn".to_string()], "no temp file left");
}
