//! duratom's storage engine: durable reads, writes and deletes of one value
//! per store, for every backend, behind the `Store` trait; called from the
//! JVM through `jni.rs`.

pub mod backends;
pub mod config;
pub mod file;
pub mod https;
pub mod jni;
pub mod postgres;
pub mod redis;
pub mod runtime;
pub mod s3;
pub mod sqlite;
pub mod store;
#[cfg(test)]
pub mod test_support;
pub mod tls;
