//! Our SQLite copy's file locks, made safe beside another SQLite copy in the
//! same process (an application's sqlite-jdbc on the same database).
//!
//! POSIX advisory locks belong to the process: the other copy's locks never
//! conflict with ours, and its close of a descriptor drops ours, after which
//! (WAL mode) it checkpoints and resets the WAL under our connection, losing
//! commits we acknowledged. On Linux, `ofd_locks.c` replaces the unix VFS's
//! open, close and fcntl so that our locks are open-file-description locks:
//! they conflict with the other copy's POSIX locks, inside the process and
//! across processes, and only our own closes release them. macOS has no such
//! locks; there the locks stay POSIX (doc/backends/sqlite.md).

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{c_char, c_int, CStr};
    use std::sync::Once;

    use rusqlite::ffi;

    extern "C" {
        fn duratom_ofd_open(path: *const c_char, flags: c_int, mode: c_int) -> c_int;
        fn duratom_ofd_close(fd: c_int) -> c_int;
        fn duratom_ofd_fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    }

    static INSTALL: Once = Once::new();

    /// Puts the replacements into the unix VFS, once, before our copy opens
    /// its first file. Panics if SQLite has no unix VFS or refuses a
    /// replacement: both are fixed properties of the bundled SQLite.
    pub fn install() {
        INSTALL.call_once(|| unsafe {
            let vfs = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            assert!(!vfs.is_null(), "the bundled SQLite has no unix VFS");
            let set = (*vfs).xSetSystemCall.expect("the unix VFS lets system calls be replaced");
            let calls: [(&CStr, unsafe extern "C" fn()); 3] = [
                (c"open", std::mem::transmute::<_, unsafe extern "C" fn()>(duratom_ofd_open as unsafe extern "C" fn(_, _, _) -> _)),
                (c"close", std::mem::transmute::<_, unsafe extern "C" fn()>(duratom_ofd_close as unsafe extern "C" fn(_) -> _)),
                (c"fcntl", std::mem::transmute::<_, unsafe extern "C" fn()>(duratom_ofd_fcntl as unsafe extern "C" fn(_, _, ...) -> _)),
            ];
            for (name, f) in calls {
                let rc = set(vfs, name.as_ptr(), Some(f));
                assert_eq!(rc, ffi::SQLITE_OK, "the unix VFS refused to replace {name:?}");
            }
        });
    }
}

#[cfg(target_os = "linux")]
pub(super) use linux::install;

/// Without OFD locks (macOS), SQLite's own POSIX locks stay.
#[cfg(not(target_os = "linux"))]
pub(super) fn install() {}
