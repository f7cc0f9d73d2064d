//! The SQLite store on real database files in temp directories.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::config::Config;
use crate::store::{Expect, StoreError};
use crate::test_support::conflict;

fn config(dir: &Path, table: &str, extra: &[(&str, &str)]) -> Config {
    let path = dir.join("db.sqlite");
    let mut pairs = vec![("path", path.to_str().unwrap()), ("table", table)];
    pairs.extend_from_slice(extra);
    Config::from_pairs(BACKEND, &pairs)
}

/// What the database file in `dir` holds in table `t` row 0 without its WAL
/// (read from a copy of the file alone): what is left if the WAL is removed
/// and the process dies.
fn value_in_the_database_file_alone(dir: &Path) -> String {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("db.sqlite"), copy.path().join("db.sqlite")).unwrap();
    Connection::open(copy.path().join("db.sqlite"))
        .unwrap()
        .query_row("SELECT value FROM t WHERE id = 0", [], |r| r.get(0))
        .unwrap()
}

/// Makes the database in `dir` with `sql`, as another program would, before
/// any store opens it.
fn database_with(dir: &Path, sql: &str) {
    super::locks::install(); // before this test's own first connection
    Connection::open(dir.join("db.sqlite")).unwrap().execute_batch(sql).unwrap();
}

/// The one value `sql` selects from the database in `dir`, read by a
/// connection of its own.
fn query<T: rusqlite::types::FromSql>(dir: &Path, sql: &str) -> T {
    Connection::open(dir.join("db.sqlite")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

crate::store_contract_tests!(|dir: &Path, name: &str| config(dir, name, &[]));

#[test]
fn wal_and_full_sync_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    let db = Connection::open(dir.path().join("db.sqlite")).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn tables_of_the_original_shape_work_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    database_with(
        dir.path(),
        "CREATE TABLE MyTable (id int PRIMARY KEY, value text);
         INSERT INTO MyTable VALUES (0, '{:x #{1 2}}');
         INSERT INTO MyTable VALUES (3, '[:other]');",
    );
    let mut s = open(&config(dir.path(), "MyTable", &[])).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"{:x #{1 2}}");
    s.commit(b"{:x 2}", &Expect::Anything { after: None }).unwrap();
    let db = Connection::open(&path).unwrap();
    let (n, v0, v3): (i64, String, String) = db
        .query_row(
            "SELECT count(*), (SELECT value FROM mytable WHERE id=0), (SELECT value FROM mytable WHERE id=3) FROM mytable",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((n, v0.as_str(), v3.as_str()), (2, "{:x 2}", "[:other]"));
    let ty: String = db
        .query_row("SELECT typeof(value) FROM mytable WHERE id=0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        ty, "text",
        "a text column keeps text, readable by the original"
    );
}

#[test]
fn blob_columns_take_bytes_and_text_columns_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(&config(dir.path(), "bin", &[("column-type", "blob")])).unwrap();
    b.commit(&[0, 159, 146, 150, 255], &Expect::Anything { after: None })
        .unwrap();
    assert_eq!(
        b.load().unwrap().unwrap().bytes,
        vec![0, 159, 146, 150, 255]
    );
    let mut t = open(&config(dir.path(), "txt", &[])).unwrap();
    let e = t
        .commit(&[0xff, 0xfe], &Expect::Anything { after: None })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not UTF-8") && e.contains(":column-type :blob"),
        "{e}"
    );
}

#[test]
fn hostile_table_names_are_identifiers_never_sql() {
    super::locks::install(); // before this test's own first connection
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE victim (id int); INSERT INTO victim VALUES (1);")
        .unwrap();
    for name in [
        "victim\"; DROP TABLE victim; --",
        "it's",
        "a.b",
        "x) ; DELETE FROM victim; --",
        "\u{1F600}",
    ] {
        let mut s = open(&config(dir.path(), name, &[])).unwrap();
        s.commit(b"1", &Expect::Anything { after: None }).unwrap();
        assert_eq!(s.load().unwrap().unwrap().bytes, b"1");
    }
    let n: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM victim", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let e = open(&config(dir.path(), "victim", &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a duratom table"), "{e}");
}

#[test]
fn a_lock_held_elsewhere_is_a_bounded_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[("busy-timeout-ms", "300")])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    let other = Connection::open(dir.path().join("db.sqlite")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = std::time::Instant::now();
    let e = s.commit(b"2", &Expect::Anything { after: None }).unwrap_err().to_string();
    assert!(e.contains("locked by another connection"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    other.execute_batch("ROLLBACK").unwrap();
    s.commit(b"2", &Expect::Anything { after: None }).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"2");
}

// Not on Windows: it refuses to remove a database file that SQLite has open.
#[cfg(unix)]
#[test]
fn a_removed_database_is_reopened_not_written_into_the_void() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("d");
    std::fs::create_dir(&sub).unwrap();
    let mut s = open(&config(&sub, "t", &[])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();
    let e = s.commit(b"2", &Expect::Anything { after: None }).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    std::fs::create_dir(&sub).unwrap();
    assert!(s.load().unwrap().is_none(), "a new, empty database");
    s.commit(b"3", &Expect::Anything { after: None }).unwrap();
    assert_eq!(query::<String>(&sub, "SELECT value FROM t WHERE id = 0"), "3");
}

#[test]
fn bad_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&config(dir.path(), "t", &[("column-type", "bytea")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("column-type"), "{e}");
    let e = open(&config(dir.path(), " ", &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("table name is empty"), "{e}");
    let e = open(&Config::from_pairs(
        BACKEND,
        &[("path", "/no/such/dir/x.db"), ("table", "t")],
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("/no/such/dir") && e.contains("does not exist"),
        "{e}"
    );
}

/// Descriptors this process has open on files under `dir`.
#[cfg(target_os = "linux")]
fn open_fds_under(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn another_sqlite_copy_in_this_process_is_locked_out() {
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[("busy-timeout-ms", "300")])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    // What another SQLite copy does to write: a POSIX lock, owned by this
    // process, on the WAL write-lock byte of the -shm file.
    let shm = std::fs::OpenOptions::new().read(true).write(true).open(dir.path().join("db.sqlite-shm")).unwrap();
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = 120;
    lock.l_len = 1;
    assert_eq!(unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_SETLK, &lock) }, 0);
    let e = s.commit(b"2", &Expect::Anything { after: None }).unwrap_err().to_string();
    assert!(e.contains("locked by another connection"), "{e}");
    // Its close drops its own lock, never ours.
    drop(shm);
    s.commit(b"3", &Expect::Anything { after: None }).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"3");
}

#[test]
fn our_connections_on_one_file_share_its_locks() {
    let dir = tempfile::tempdir().unwrap();
    let row = |id: &'static str| config(dir.path(), "t", &[("row-id", id)]);
    let mut a = open(&row("0")).unwrap();
    let mut b = open(&row("0")).unwrap();
    let mut c = open(&row("1")).unwrap();
    let mut seen = a.commit(b"a0", &Expect::Nothing).unwrap();
    for i in 0..50 {
        let (w, other) = if i % 2 == 0 { (&mut b, &mut a) } else { (&mut a, &mut b) };
        assert_eq!(w.load().unwrap().unwrap().version, seen);
        seen = w.commit(format!("v{i}").as_bytes(), &Expect::Version(seen.clone())).unwrap();
        assert!(conflict(other.commit(b"stale", &Expect::Nothing)));
        c.commit(format!("c{i}").as_bytes(), &Expect::Anything { after: None }).unwrap();
    }
    // Closing one connection leaves the others' locks and WAL in place.
    drop(a);
    b.commit(b"b-last", &Expect::Version(seen)).unwrap();
    let mut d = open(&row("1")).unwrap();
    assert_eq!(d.load().unwrap().unwrap().bytes, b"c49");
    drop(c);
    d.commit(b"d-last", &Expect::Anything { after: None }).unwrap();
    drop(b);
    drop(d);
    // The last close took the exclusive lock, checkpointed and removed the
    // WAL: SQLite's lock bookkeeping and the file's locks agree.
    assert!(!dir.path().join("db.sqlite-wal").exists());
    #[cfg(target_os = "linux")]
    assert_eq!(open_fds_under(dir.path()), Vec::<std::path::PathBuf>::new(), "no descriptor kept");
    let db = Connection::open(dir.path().join("db.sqlite")).unwrap();
    let rows: Vec<(i64, String)> = db
        .prepare("SELECT id, value FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, vec![(0, "b-last".to_string()), (1, "d-last".to_string())]);
}

// Not on Windows: it refuses to remove a WAL file that SQLite has open.
#[cfg(unix)]
#[test]
fn a_removed_wal_loses_no_acknowledged_commit_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("db.sqlite");
    let read = |path: &Path| -> String {
        Connection::open(path).unwrap().query_row("SELECT value FROM t WHERE id = 0", [], |r| r.get(0)).unwrap()
    };
    let mut s = open(&config(dir.path(), "t", &[])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    s.commit(b"2", &Expect::Anything { after: None }).unwrap();
    std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
    // The next call finds the WAL it writes gone: the acknowledged commits
    // in it are copied into the database file, and the call reports it,
    // writing nothing.
    let e = s.commit(b"3", &Expect::Anything { after: None }).unwrap_err();
    assert!(matches!(e, crate::store::StoreError::Backend { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("db.sqlite-wal was removed") && e.contains("copied into the database file"), "{e}");
    assert!(e.contains("nothing was written"), "{e}");
    // The database file alone (what is left if this process dies now) holds them.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&db_path, copy.path().join("db.sqlite")).unwrap();
    assert_eq!(read(&copy.path().join("db.sqlite")), "2");
    // Work goes on in a new WAL, visible to other connections.
    s.commit(b"3", &Expect::Anything { after: None }).unwrap();
    assert_eq!(read(&db_path), "3");
    // A load finds it too; the call after it works.
    std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
    let e = s.load().unwrap_err().to_string();
    assert!(e.contains("db.sqlite-wal was removed"), "{e}");
    assert_eq!(s.load().unwrap().unwrap().bytes, b"3");
    s.commit(b"4", &Expect::Anything { after: None }).unwrap();
    drop(s);
    assert_eq!(read(&db_path), "4");
}

// Not on Windows: it refuses to remove a WAL file that SQLite has open.
#[cfg(unix)]
#[test]
fn an_acknowledged_commit_is_in_the_database_file_before_the_wal_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    s.commit(b"2", &Expect::Anything { after: None }).unwrap();
    std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
    // What is left if this process dies now, with no further call: the
    // database file alone, which holds every acknowledged commit.
    let stored = value_in_the_database_file_alone(dir.path());
    assert_eq!(stored, "2");
    std::mem::forget(s);
}

#[test]
fn a_commit_during_another_connections_read_reaches_the_database_file_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    // Another connection (sqlite-jdbc in the same JVM, say) is inside a read
    // transaction when the commit runs, and ends it a moment later: until
    // then no checkpoint may copy the commit into the database file.
    let (began, begun) = std::sync::mpsc::channel();
    let path = dir.path().join("db.sqlite");
    let reader = std::thread::spawn(move || {
        let db = Connection::open(path).unwrap();
        db.execute_batch("BEGIN").unwrap();
        let _: String = db.query_row("SELECT value FROM t WHERE id = 0", [], |r| r.get(0)).unwrap();
        began.send(()).unwrap();
        // The reader's own work, which the commit has to outlast.
        std::thread::sleep(Duration::from_millis(150));
        db.execute_batch("COMMIT").unwrap();
    });
    begun.recv().unwrap();
    s.commit(b"2", &Expect::Anything { after: None }).unwrap();
    let stored = value_in_the_database_file_alone(dir.path());
    assert_eq!(stored, "2", "the acknowledged commit is in the database file, not only in the WAL");
    reader.join().unwrap();
}

#[test]
fn a_commit_kept_from_the_database_file_past_the_busy_timeout_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[("busy-timeout-ms", "200")])).unwrap();
    s.commit(b"1", &Expect::Anything { after: None }).unwrap();
    let reader = Connection::open(dir.path().join("db.sqlite")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: String = reader.query_row("SELECT value FROM t WHERE id = 0", [], |r| r.get(0)).unwrap();
    let err = s.commit(b"2", &Expect::Anything { after: None }).unwrap_err();
    assert!(matches!(err, StoreError::OutcomeUnknown { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("read transaction") && msg.contains("200 ms"), "{msg}");
    // The commit is in the WAL; once the reader is done, the next commit
    // copies both.
    reader.execute_batch("COMMIT").unwrap();
    s.commit(b"3", &Expect::Anything { after: None }).unwrap();
    let stored = value_in_the_database_file_alone(dir.path());
    assert_eq!(stored, "3");
}

#[test]
fn stores_opening_one_new_database_at_once_all_open_without_waiting_out_the_timeout() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let start = std::sync::Arc::new(std::sync::Barrier::new(3));
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let cfg = config(dir.path(), "t", &[("busy-timeout-ms", "5000")]);
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let t = std::time::Instant::now();
                    let mut s = open(&cfg).map_err(|e| e.to_string())?;
                    s.commit(b"1", &Expect::Anything { after: None }).map_err(|e| e.to_string())?;
                    Ok::<_, String>(t.elapsed())
                })
            })
            .collect();
        for o in openers {
            let took = o.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(took < Duration::from_millis(2500), "round {round}: opening and committing took {took:?}");
        }
    }
}

#[test]
fn a_failed_construction_removes_the_database_it_created_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&config(dir.path(), "t", &[])).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left in the directory");

    // A database that was there is kept, even with nothing stored.
    drop(Connection::open(dir.path().join("db.sqlite")).unwrap());
    drop(open(&config(dir.path(), "t", &[])).unwrap());
    assert!(dir.path().join("db.sqlite").exists());
}

#[test]
fn a_clean_up_cut_short_by_its_process_dying_is_finished_by_the_next_open() {
    // Our file locks first: this test's own connections open before any
    // store of it, while other tests may be installing them.
    super::locks::install();
    let dir = tempfile::tempdir().unwrap();
    // What a clean-up leaves when its process dies after moving the new
    // database aside: the table alone, no row. And one holding a row,
    // which may be another store's commit and is kept.
    let empty = dir.path().join(".duratom-removing-4242-000000001.db");
    Connection::open(&empty).unwrap().execute_batch("CREATE TABLE t (id INTEGER, value TEXT)").unwrap();
    let holding = dir.path().join(".duratom-removing-4242-000000002.db");
    Connection::open(&holding)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER, value TEXT); INSERT INTO t VALUES (0, '1')")
        .unwrap();
    let _s = open(&config(dir.path(), "t", &[])).unwrap();
    assert!(!empty.exists(), "the abandoned empty database is removed");
    assert!(holding.exists(), "a database holding a row is kept");
}

#[test]
fn a_commit_racing_a_failed_constructions_clean_up_is_kept() {
    let read = |dir: &Path| -> Option<String> {
        Connection::open(dir.join("db.sqlite")).unwrap().query_row("SELECT value FROM t WHERE id = 0", [], |r| r.get(0)).ok()
    };
    // Another store opens the new database, commits and closes, right after
    // the clean-up found no other connection.
    let dir = tempfile::tempdir().unwrap();
    let failed = open(&config(dir.path(), "t", &[])).unwrap();
    let cfg = config(dir.path(), "t", &[]);
    crate::store::BEFORE_REMOVAL.with(|f| {
        *f.borrow_mut() = Some(Box::new(move || {
            let mut other = open(&cfg).unwrap();
            other.commit(b"closed", &Expect::Anything { after: None }).unwrap();
        }))
    });
    drop(failed);
    assert_eq!(read(dir.path()).as_deref(), Some("closed"), "the other store's commit is kept");

    // Another store opens it then and stays open: its later commits land.
    let dir = tempfile::tempdir().unwrap();
    let failed = open(&config(dir.path(), "t", &[])).unwrap();
    let cfg = config(dir.path(), "t", &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    crate::store::BEFORE_REMOVAL.with(|f| {
        *f.borrow_mut() = Some(Box::new(move || tx.send(open(&cfg).unwrap()).unwrap()))
    });
    drop(failed);
    let mut other = rx.recv().unwrap();
    other.commit(b"open", &Expect::Anything { after: None }).unwrap();
    drop(other);
    assert_eq!(read(dir.path()).as_deref(), Some("open"));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("db.sqlite")], "no moved file left");
}

// ------------------------------------------------------------------ log mode

const LOG: &[(&str, &str)] = &[("log", "true")];

/// The records of row `id` of table `t`'s records table, as stored, read by
/// a connection of its own.
fn records_of(dir: &Path, id: i64) -> Vec<(i64, String)> {
    let db = Connection::open(dir.join("db.sqlite")).unwrap();
    let mut q = db.prepare("SELECT seq, record FROM t_duratom_log WHERE id = ?1 ORDER BY seq").unwrap();
    let rows = q.query_map([id], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

mod log_mode_contract {
    use super::*;
    crate::store_contract_tests!(|dir: &Path, name: &str| config(dir, name, LOG));
}

#[test]
fn log_mode_loads_the_row_then_its_records_in_order_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v0 = s.commit(b"{:a 1}", &Expect::Nothing).unwrap();
    let v1 = s.append(b"[[:assoc [] :b 2]]", &v0).unwrap();
    let v2 = s.append(b"[[:dissoc [] :a]]", &v1).unwrap();
    assert!(v0 != v1 && v1 != v2 && v0 != v2, "each append makes a new version");
    let expected = "{:a 1}\n;duratom/r version=1 length=18\n[[:assoc [] :b 2]]\n;duratom/r version=2 length=17\n[[:dissoc [] :a]]\n";
    drop(s);
    let mut again = open(&config(dir.path(), "t", LOG)).unwrap();
    let stored = again.load().unwrap().unwrap();
    assert_eq!(String::from_utf8(stored.bytes).unwrap(), expected);
    assert_eq!(stored.version, v2);
    // The row alone still holds the base, for every other reader.
    assert_eq!(value_in_the_database_file_alone(dir.path()), "{:a 1}");
    assert_eq!(records_of(dir.path(), 0).len(), 2);
}

#[test]
fn an_append_after_a_version_another_store_replaced_conflicts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&config(dir.path(), "t", LOG)).unwrap();
    let mut b = open(&config(dir.path(), "t", LOG)).unwrap();
    let v0 = a.commit(b"{}", &Expect::Nothing).unwrap();
    assert_eq!(b.load().unwrap().unwrap().version, v0);
    let v1 = a.append(b"[[:assoc [] :by :a]]", &v0).unwrap();
    assert!(conflict(b.append(b"[[:assoc [] :by :b]]", &v0)));
    assert!(conflict(b.commit(b"{:by :b}", &Expect::Version(v0.clone()))));
    assert_eq!(records_of(dir.path(), 0), vec![(1, "[[:assoc [] :by :a]]".to_string())]);
    // Having read the newest version, b appends after it.
    assert_eq!(b.load().unwrap().unwrap().version, v1);
    let v2 = b.append(b"[[:assoc [] :by :b]]", &v1).unwrap();
    assert!(conflict(a.append(b"[[:assoc [] :x 1]]", &v1)));
    // An equal base with other records is another version.
    let w0 = a.commit(b"{}", &Expect::Version(v2)).unwrap();
    assert_eq!(w0, v0, "a row without records has its content's version");
    assert!(conflict(a.append(b"[[:assoc [] :x 1]]", &v1)));
    // Nothing stored: nothing to append to.
    a.delete().unwrap();
    assert!(conflict(a.append(b"[[:assoc [] :x 1]]", &v0)));
}

#[test]
fn a_full_commit_leaves_plain_edn_in_the_row_and_removes_only_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", &[("log", "true"), ("row-id", "1")])).unwrap();
    let mut other = open(&config(dir.path(), "t", &[("log", "true"), ("row-id", "2")])).unwrap();
    let v = s.commit(b"{:a 1}", &Expect::Nothing).unwrap();
    let v = s.append(b"[[:assoc [] :b 2]]", &v).unwrap();
    let w = other.commit(b"[]", &Expect::Nothing).unwrap();
    other.append(b"[[:conj [] 1]]", &w).unwrap();
    let compacted = s.commit(b"{:a 1, :b 2}", &Expect::Version(v)).unwrap();
    assert!(records_of(dir.path(), 1).is_empty());
    assert_eq!(records_of(dir.path(), 2).len(), 1, "another row's records stay");
    let stored = s.load().unwrap().unwrap();
    assert_eq!((stored.bytes.as_slice(), stored.version), (&b"{:a 1, :b 2}"[..], compacted));
    assert_eq!(query::<String>(dir.path(), "SELECT value FROM t WHERE id = 1"), "{:a 1, :b 2}");
}

#[test]
fn delete_in_log_mode_removes_the_row_and_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v = s.commit(b"{}", &Expect::Nothing).unwrap();
    s.append(b"[[:assoc [] :b 2]]", &v).unwrap();
    s.delete().unwrap();
    assert!(s.load().unwrap().is_none());
    assert!(records_of(dir.path(), 0).is_empty());
    assert_eq!(query::<i64>(dir.path(), "SELECT count(*) FROM t"), 0);
}

#[test]
fn a_row_rewritten_outside_log_mode_under_its_records_is_an_error_naming_the_records_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v = s.commit(b"{:a 1}", &Expect::Nothing).unwrap();
    s.append(b"[[:assoc [] :b 2]]", &v).unwrap();
    Connection::open(dir.path().join("db.sqlite"))
        .unwrap()
        .execute("UPDATE t SET value = '{:a 9}' WHERE id = 0", [])
        .unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("change record 1") && e.contains("t_duratom_log") && e.contains("left as they are"), "{e}");
    assert_eq!(records_of(dir.path(), 0).len(), 1, "nothing removed");
    // The statement the error gives makes the row's value the state again.
    let delete = e.split_once("delete the row's records: ").map(|(_, sql)| sql.to_string()).expect("the error gives the statement");
    Connection::open(dir.path().join("db.sqlite")).unwrap().execute(&delete, []).unwrap();
    assert_eq!(s.load().unwrap().unwrap().bytes, b"{:a 9}".to_vec());
}

#[test]
fn appends_are_refused_outside_log_mode_and_records_must_be_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = open(&config(dir.path(), "p", &[])).unwrap();
    let v = plain.commit(b"{}", &Expect::Nothing).unwrap();
    let e = plain.append(b"[]", &v).unwrap_err().to_string();
    assert!(e.contains("not in log mode"), "{e}");
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v = s.commit(b"{}", &Expect::Nothing).unwrap();
    let e = s.append(&[0xff], &v).unwrap_err().to_string();
    assert!(e.contains("UTF-8"), "{e}");
}

#[test]
fn a_failed_construction_in_log_mode_removes_the_database_it_created() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&config(dir.path(), "t", LOG)).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left in the directory");
}

// Not on Windows: it refuses to remove a WAL file that SQLite has open.
#[cfg(unix)]
#[test]
fn an_acknowledged_append_is_in_the_database_file_before_the_wal_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v = s.commit(b"{}", &Expect::Nothing).unwrap();
    s.append(b"[[:assoc [] :b 2]]", &v).unwrap();
    std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("db.sqlite"), copy.path().join("db.sqlite")).unwrap();
    assert_eq!(records_of(copy.path(), 0), vec![(1, "[[:assoc [] :b 2]]".to_string())]);
    std::mem::forget(s);
}

#[test]
fn outside_log_mode_a_row_with_records_is_refused_and_a_full_write_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&config(dir.path(), "t", LOG)).unwrap();
    let v = s.commit(b"{:a 1}", &Expect::Nothing).unwrap();
    s.append(b"[[:assoc [] :b 2]]", &v).unwrap();
    let mut plain = open(&config(dir.path(), "t", &[])).unwrap();
    let e = plain.load().unwrap_err().to_string();
    assert!(e.contains("change records written in log mode") && e.contains("t_duratom_log"), "{e}");
    plain.commit(b"{:c 3}", &Expect::Anything { after: None }).unwrap();
    assert!(records_of(dir.path(), 0).is_empty());
    assert_eq!(s.load().unwrap().unwrap().bytes, b"{:c 3}");
    assert_eq!(plain.load().unwrap().unwrap().bytes, b"{:c 3}");
}

#[test]
fn log_mode_works_on_a_table_of_the_original_shape_and_refuses_a_foreign_records_table() {
    let dir = tempfile::tempdir().unwrap();
    database_with(
        dir.path(),
        "CREATE TABLE MyTable (id int PRIMARY KEY, value text);
         INSERT INTO MyTable VALUES (0, '{:x 1}');
         CREATE TABLE other_duratom_log (a int);",
    );
    let mut s = open(&config(dir.path(), "MyTable", LOG)).unwrap();
    let stored = s.load().unwrap().unwrap();
    assert_eq!(stored.bytes, b"{:x 1}");
    let v = s.append(b"[[:assoc [] :y 2]]", &stored.version).unwrap();
    assert_eq!(s.load().unwrap().unwrap().version, v);
    let e = open(&config(dir.path(), "other", LOG)).err().unwrap().to_string();
    assert!(e.contains("other_duratom_log") && e.contains("change records"), "{e}");
}
