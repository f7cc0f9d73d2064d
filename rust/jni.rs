//! The one crossing between the JVM and the storage engine: the `native` methods
//! of `java/duratom/Native.java`. This is the only file that touches JNI types.
//!
//! Rules kept here:
//! - every call catches panics and turns every error into a Java exception,
//!   so nothing in Rust can take the JVM down;
//! - stores are named by `long` handles into a table owned by Rust, never by
//!   pointers, so a closed or bogus handle is an exception, not a segfault;
//! - bytes cross as `byte[]`, never through JNI's modified-UTF-8 strings.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jni::objects::{JByteArray, JClass, JObject, JObjectArray};
use jni::sys::{jbyteArray, jlong, jobjectArray};
use jni::JNIEnv;
use once_cell::sync::Lazy;
use parking_lot::Mutex;

use crate::backends::open_store;
use crate::config::Config;
use crate::store::{Expect, Store, StoreError, Version};

type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// Open stores by handle. Each store has its own mutex, so a slow commit on
/// one duratom never holds up another.
static STORES: Lazy<Mutex<HashMap<i64, SharedStore>>> = Lazy::new(|| Mutex::new(HashMap::new()));
static NEXT_HANDLE: AtomicI64 = AtomicI64::new(1);

const STORAGE_EXCEPTION: &str = "duratom/Native$StorageException";
const CONFLICT_EXCEPTION: &str = "duratom/Native$ConflictException";
const OUTCOME_UNKNOWN_EXCEPTION: &str = "duratom/Native$OutcomeUnknownException";

/// Why a native call failed, before it becomes a Java exception.
enum Failure {
    Store(StoreError),
    Jni(jni::errors::Error),
    Panic(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure::Jni(e)
    }
}

/// Runs `body`, turning a panic or an error into a pending Java exception and
/// the `fallback` return value (which Java never sees, as it throws).
fn cross<'l, T>(
    env: &mut JNIEnv<'l>,
    fallback: T,
    body: impl FnOnce(&mut JNIEnv<'l>) -> Result<T, Failure>,
) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(env))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Failure::Panic(what))
    });
    match outcome {
        Ok(v) => v,
        Err(failure) => {
            if env.exception_check().unwrap_or(false) {
                return fallback; // a JNI call already raised a Java exception; keep it
            }
            let (class, message) = match failure {
                Failure::Store(e @ StoreError::Config { .. }) => ("java/lang/IllegalArgumentException", e.to_string()),
                Failure::Store(e @ StoreError::UnknownHandle(_)) => ("java/lang/IllegalStateException", e.to_string()),
                Failure::Store(e @ StoreError::Conflict { .. }) => (CONFLICT_EXCEPTION, e.to_string()),
                Failure::Store(e @ StoreError::OutcomeUnknown { .. }) => (OUTCOME_UNKNOWN_EXCEPTION, e.to_string()),
                Failure::Store(e) => (STORAGE_EXCEPTION, e.to_string()),
                Failure::Jni(e) => (STORAGE_EXCEPTION, format!("duratom native call failed in JNI: {e}")),
                Failure::Panic(p) => (STORAGE_EXCEPTION, format!("duratom native library bug (panic): {p}")),
            };
            let _ = env.throw_new(class, message);
            fallback
        }
    }
}

fn store_for(handle: jlong) -> Result<SharedStore, StoreError> {
    STORES.lock().get(&handle).cloned().ok_or(StoreError::UnknownHandle(handle))
}

fn bytes_in(env: &mut JNIEnv, array: &JByteArray) -> Result<Vec<u8>, Failure> {
    Ok(env.convert_byte_array(array)?)
}

/// A version token as the JVM hands it back (the UTF-8 text a load or
/// commit returned).
fn version_in(env: &mut JNIEnv, array: &JByteArray) -> Result<Version, Failure> {
    Ok(Version(String::from_utf8_lossy(&bytes_in(env, array)?).into_owned()))
}

/// The first `length` bytes of the concatenation of `chunks` (a `byte[][]`),
/// copied out of the JVM heap into one buffer.
fn joined_prefix(env: &mut JNIEnv, chunks: &JObjectArray, length: jlong) -> Result<Vec<u8>, Failure> {
    let count = env.get_array_length(chunks)?;
    let mut bytes = vec![0u8; usize::try_from(length).unwrap_or(0)];
    let mut filled = 0usize;
    for i in 0..count {
        if filled == bytes.len() {
            break;
        }
        let chunk = JByteArray::from(env.get_object_array_element(chunks, i)?);
        let take = (env.get_array_length(&chunk)? as usize).min(bytes.len() - filled);
        // jbyte is i8; the buffer is the same memory seen as signed bytes.
        let target = &mut bytes[filled..filled + take];
        let signed = unsafe { std::slice::from_raw_parts_mut(target.as_mut_ptr() as *mut i8, take) };
        env.get_byte_array_region(&chunk, 0, signed)?;
        env.delete_local_ref(chunk)?; // many chunks must not fill the local reference table
        filled += take;
    }
    if length < 0 || filled != bytes.len() {
        let detail = format!("commit length {length} does not match the {filled} bytes the chunks hold");
        return Err(Failure::Store(StoreError::config("duratom", detail)));
    }
    Ok(bytes)
}

/// `static native long open(byte[] config)`: opens a store, returns its handle.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_open<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, config: JByteArray<'l>) -> jlong {
    cross(&mut env, 0, |env| {
        let config = Config::parse(&bytes_in(env, &config)?)?;
        let store = open_store(&config)?;
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        STORES.lock().insert(handle, Arc::new(Mutex::new(store)));
        Ok(handle)
    })
}

/// `static native byte[][] load(long handle)`: `{value, version}`, or null
/// when nothing is stored.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_load<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, handle: jlong) -> jobjectArray {
    cross(&mut env, std::ptr::null_mut(), |env| {
        let store = store_for(handle)?;
        let stored = store.lock().load()?;
        let Some(stored) = stored else { return Ok(std::ptr::null_mut()) };
        let pair = env.new_object_array(2, "[B", JObject::null())?;
        let value = env.byte_array_from_slice(&stored.bytes)?;
        let version = env.byte_array_from_slice(stored.version.0.as_bytes())?;
        env.set_object_array_element(&pair, 0, value)?;
        env.set_object_array_element(&pair, 1, version)?;
        Ok(pair.into_raw())
    })
}

/// `static native byte[] commit(long handle, byte[][] chunks, long length, byte[] expected, byte[] lastSeen)`:
/// durably stores the first `length` bytes of the chunks' concatenation and
/// returns the new version. `expected` null: write unconditionally, after
/// `lastSeen` (the version the caller last saw, null: none); empty: only if
/// nothing is stored; else only if the stored version is still `expected`.
/// A failed condition throws ConflictException.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_commit<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    chunks: JObjectArray<'l>,
    length: jlong,
    expected: JByteArray<'l>,
    last_seen: JByteArray<'l>,
) -> jbyteArray {
    cross(&mut env, std::ptr::null_mut(), |env| {
        let store = store_for(handle)?;
        let expect = if expected.is_null() {
            let after = if last_seen.is_null() { None } else { Some(version_in(env, &last_seen)?) };
            Expect::Anything { after }
        } else {
            match version_in(env, &expected)? {
                v if v.0.is_empty() => Expect::Nothing,
                v => Expect::Version(v),
            }
        };
        write_chunks(env, &store, &chunks, length, |s, bytes| s.commit(bytes, &expect))
    })
}

/// `static native byte[] append(long handle, byte[][] chunks, long length, byte[] after)`:
/// durably appends the first `length` bytes of the chunks' concatenation as
/// one change record (log mode) to the state stored as version `after`, and
/// returns the new version. ConflictException when `after` is not stored.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_append<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    chunks: JObjectArray<'l>,
    length: jlong,
    after: JByteArray<'l>,
) -> jbyteArray {
    cross(&mut env, std::ptr::null_mut(), |env| {
        let store = store_for(handle)?;
        let after = version_in(env, &after)?;
        write_chunks(env, &store, &chunks, length, |s, bytes| s.append(bytes, &after))
    })
}

/// What commit and append share: the first `length` bytes of the chunks'
/// concatenation, handed to `write` on `store` (under its lock), and the new
/// version it returns as a Java byte array.
fn write_chunks(
    env: &mut JNIEnv,
    store: &SharedStore,
    chunks: &JObjectArray,
    length: jlong,
    write: impl FnOnce(&mut dyn Store, &[u8]) -> Result<Version, StoreError>,
) -> Result<jbyteArray, Failure> {
    let bytes = joined_prefix(env, chunks, length)?;
    let version = write(&mut **store.lock(), &bytes)?;
    Ok(env.byte_array_from_slice(version.0.as_bytes())?.into_raw())
}

/// `static native void delete(long handle)`: removes what is stored.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_delete<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    cross(&mut env, (), |_| Ok(store_for(handle)?.lock().delete()?))
}

/// The native-interface fingerprint of this build: the `native` signatures of
/// `Native.java` and the crate version, as `build.rs` computed them.
pub const FINGERPRINT: &str = env!("DURATOM_NATIVE_ABI_FINGERPRINT");

/// `static native byte[] fingerprint()`: [`FINGERPRINT`], which `Native`
/// compares with its own right after loading the library.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_fingerprint<'l>(mut env: JNIEnv<'l>, _: JClass<'l>) -> jbyteArray {
    cross(&mut env, std::ptr::null_mut(), |env| Ok(env.byte_array_from_slice(FINGERPRINT.as_bytes())?.into_raw()))
}

/// `static native void close(long handle)`: forgets the handle and releases
/// the store's resources (connections, files). Closing twice is harmless.
#[no_mangle]
pub extern "system" fn Java_duratom_Native_close<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    cross(&mut env, (), |_| {
        STORES.lock().remove(&handle);
        Ok(())
    })
}
