//! The store: built from the settings, a kept connection, and load, commit
//! and delete on one key.

use std::time::{Duration, Instant};

use redis::{ConnectionLike, RedisError, Script};

use super::connection::{Link, Target};
use super::errors::{ambiguous, describe, Failure};
use super::settings::Settings;
use super::BACKEND;
use crate::store::{Expect, Resource, Store, StoreError, Stored, Version};

/// SET the key to ARGV[1] only if its value's SHA-1 is ARGV[2]: 1 if set, 0 if not.
const COMPARE_AND_SET: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or redis.sha1hex(cur) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

pub struct RedisStore {
    target: Target,
    key: Vec<u8>,
    pub(super) timeout: Duration,
    endpoint: String,
    client_name: String,
    cas: Script,
    pub(super) conn: Option<Link>,
    resource: Resource,
}

impl RedisStore {
    /// Checks the settings; does not connect.
    pub(super) fn new(settings: Settings) -> Result<RedisStore, StoreError> {
        let bad = |detail: String| StoreError::config(BACKEND, detail);
        let url = settings.url.ok_or_else(|| bad("`url` is required".into()))?;
        let key = settings.key.ok_or_else(|| bad("`key` is required".into()))?;
        if key.is_empty() {
            return Err(bad("`key` is empty".into()));
        }
        let client_name = settings.client_name;
        if client_name.is_empty() || client_name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("`client-name` must be non-empty, without spaces".into()));
        }
        let timeout_ms = settings.timeout_ms;
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(bad(format!("`timeout-ms` must be 1..3600000, got {timeout_ms}")));
        }
        let endpoint = settings.endpoint;
        let target = Target::from_url(&url, &endpoint, settings.tls_ca_cert_file.as_deref())?;
        Ok(RedisStore {
            target,
            key: key.as_bytes().to_vec(),
            timeout: Duration::from_millis(timeout_ms as u64),
            resource: Resource { backend: BACKEND, name: format!("{endpoint} key {key}") },
            endpoint,
            client_name,
            cas: Script::new(COMPARE_AND_SET),
            conn: None,
        })
    }

    /// Connects and names the connection, all before `deadline`.
    pub(super) fn connect(&self, op: &str, deadline: Instant) -> Result<Link, StoreError> {
        let fail = |e: RedisError| {
            StoreError::backend(
                &self.resource,
                op,
                format!("cannot connect to {}: {}", self.endpoint, describe(&e)),
            )
        };
        let mut conn = Link::connect(&self.target, deadline).map_err(fail)?;
        // Named, so that an operator sees duratom in CLIENT LIST.
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.client_name)
            .query(&mut conn)
            .map_err(fail)?;
        Ok(conn)
    }

    /// Runs one operation on the kept connection, connecting first if there
    /// is none. A kept connection found dead gets one more attempt on a fresh
    /// one, unless the failure hit a write in flight and running it again is
    /// not harmless (`rerun_harmless`).
    fn run<T>(
        &mut self,
        op: &str,
        rerun_harmless: bool,
        mut attempt: impl FnMut(&mut Link, &RedisStore) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        // One bound for the whole call: every attempt, reconnect and reply.
        let deadline = Instant::now() + self.timeout;
        let mut may_retry = true;
        // Set when a write went out and no answer came: it may have landed,
        // so whatever happens next, the caller must hear that.
        let mut unanswered: Option<String> = None;
        let resource = self.resource.clone();
        let fail = |unanswered: &Option<String>, detail: String| match unanswered {
            Some(first) if *first == detail => StoreError::outcome_unknown(&resource, op, detail),
            Some(first) => StoreError::outcome_unknown(&resource, op, format!("{first}; then {detail}")),
            None => StoreError::backend(&resource, op, detail),
        };
        loop {
            let mut conn = match self.conn.take() {
                Some(mut c) if c.is_open() => {
                    c.set_deadline(deadline);
                    c
                }
                _ => {
                    may_retry = false;
                    match self.connect(op, deadline) {
                        Ok(c) => c,
                        Err(e) if unanswered.is_some() => return Err(fail(&unanswered, e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
            };
            let result = attempt(&mut conn, self);
            match result {
                Ok(v) => {
                    self.conn = Some(conn);
                    return Ok(v);
                }
                Err(Failure::Conflict) => {
                    self.conn = Some(conn);
                    // After a write that went out unanswered, a conflict may
                    // be that write itself, landed: only reading storage can tell.
                    return Err(match &unanswered {
                        Some(first) => StoreError::outcome_unknown(
                            &self.resource,
                            op,
                            format!("{first}; run again on a new connection, it found another version stored"),
                        ),
                        None => StoreError::Conflict { resource: self.resource.clone() },
                    });
                }
                Err(Failure::Redis { error, ambiguous }) => {
                    let lost = error.is_io_error() || error.is_connection_dropped() || error.is_timeout();
                    if !lost {
                        self.conn = Some(conn);
                        return Err(fail(&unanswered, describe(&error)));
                    }
                    // The connection is dropped: the next attempt reconnects.
                    let detail = format!("lost the connection to {}: {}", self.endpoint, describe(&error));
                    if ambiguous && unanswered.is_none() {
                        unanswered = Some(detail.clone());
                    }
                    if may_retry && (!ambiguous || rerun_harmless) {
                        may_retry = false;
                        continue;
                    }
                    return Err(fail(&unanswered, detail));
                }
            }
        }
    }
}

fn version_of(bytes: &[u8]) -> Version {
    Version(sha1_smol::Sha1::from(bytes).digest().to_string())
}

impl Store for RedisStore {
    fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.run("load", true, |c, s| {
            let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&s.key).query(c)?;
            Ok(bytes.map(|bytes| {
                let version = version_of(&bytes);
                Stored { bytes, version }
            }))
        })
    }

    fn commit(&mut self, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        let version = version_of(bytes);
        // Setting the same bytes twice is harmless, and so is a compare-and-set
        // (a rerun that meets its own first write reports a conflict, which
        // `run` turns into outcome unknown); a create run again could not
        // tell its own key from another's.
        self.run("commit", !matches!(expect, Expect::Nothing), |c, s| {
            match expect {
                Expect::Anything { .. } => {
                    let _: () = redis::cmd("SET")
                        .arg(&s.key)
                        .arg(bytes)
                        .query(c)
                        .map_err(ambiguous)?;
                }
                Expect::Nothing => {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&s.key)
                        .arg(bytes)
                        .arg("NX")
                        .query(c)
                        .map_err(ambiguous)?;
                    if set.is_none() {
                        return Err(Failure::Conflict);
                    }
                }
                Expect::Version(expected) => {
                    let set: i64 = s
                        .cas
                        .key(&s.key)
                        .arg(bytes)
                        .arg(&expected.0)
                        .invoke(c)
                        .map_err(ambiguous)?;
                    if set != 1 {
                        return Err(Failure::Conflict);
                    }
                }
            }
            Ok(version.clone())
        })
    }

    fn delete(&mut self) -> Result<(), StoreError> {
        self.run("delete", true, |c, s| {
            let _: i64 = redis::cmd("DEL").arg(&s.key).query(c)?;
            Ok(())
        })
    }

    fn resource(&self) -> &Resource {
        &self.resource
    }
}
