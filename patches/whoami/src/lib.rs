//! `username()`: the name of the effective user, as tokio-postgres uses it
//! for the default PostgreSQL role of a connection that names none (libpq
//! does the same look-up). duratom always names the role (`user` is
//! required), so it never calls this; it must only link without frameworks.

use std::ffi::CStr;
use std::io;

/// The effective user's login name from the password database, else `$USER`
/// or `$LOGNAME`; an error when none of them knows it.
pub fn username() -> io::Result<String> {
    if let Some(name) = from_passwd() {
        return Ok(name);
    }
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var) {
            if !name.is_empty() {
                return Ok(name);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "the current user has no name (no passwd entry, USER or LOGNAME)"))
}

#[cfg(unix)]
fn from_passwd() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: `pwd` and `buf` outlive the call and `found` points into
        // them only; getpwuid_r writes nothing beyond `buf.len()` bytes.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(libc::geteuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        return if name.is_empty() { None } else { Some(name) };
    }
}

#[cfg(not(unix))]
fn from_passwd() -> Option<String> {
    None
}
