//! The one shared tokio runtime of the library, for backends whose client
//! library is async (the S3 SDK). PostgreSQL does not use it: each of its
//! stores drives its connection on the calling thread, on a current-thread
//! runtime of its own (see `postgres/store.rs`).
//!
//! One small runtime serves every S3 store: a multi-thread runtime per store
//! would cost threads per duratom and leak them until each store is dropped.
//! It is made on first use, so a program that only uses local files never
//! starts a thread. Two workers are enough: they only drive sockets and timers, while
//! the calling (JVM) thread waits in `block_on` and does the rest.
//!
//! `block_on` must not be called from inside the runtime (tokio panics on
//! that); the callers are JVM threads and test threads, never runtime workers.

use std::future::Future;

use once_cell::sync::OnceCell;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// The shared runtime, made on first call. Fails only when the OS refuses
/// the worker threads; a later call tries again.
pub fn get() -> std::io::Result<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("duratom-io")
            .enable_io()
            .enable_time()
            .build()
    })
}

/// Runs `future` to completion on the shared runtime, blocking this thread.
pub fn block_on<F: Future>(future: F) -> std::io::Result<F::Output> {
    Ok(get()?.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runtime_serves_every_caller() {
        let a = get().unwrap() as *const Runtime;
        let b = std::thread::spawn(|| get().unwrap() as *const Runtime as usize).join().unwrap();
        assert_eq!(a as usize, b);
        // Timers work, i.e. the time driver is enabled.
        let v = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        })
        .unwrap();
        assert_eq!(v, 7);
    }
}
