//! What every backend's tests share: fresh names, the conflict check, and
//! the `Store` contract (`store_contract_tests!`), which each backend's
//! `tests.rs` runs against its real storage.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backends::open_store;
use crate::config::Config;
use crate::store::{Expect, Store, StoreError, Version};

/// A name no other test of this process uses: `label`, the process id and a
/// counter, joined by `_` (a valid unquoted SQL identifier for a plain label).
pub fn unique(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{label}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether `r` is a refused conditional commit.
pub fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

/// The contract every backend keeps. Each check takes the backend's config
/// for a resource: `config(dir, name)` names the same stored value for the
/// same `name` (a scratch directory `dir` is there for backends that keep
/// files), and a value no earlier run stored for a new `name`.
pub mod contract {
    use super::*;

    /// A fresh resource name (lower case, digits and `_`; backends whose
    /// names allow other characters only map it) and its scratch directory.
    /// The time makes it new on servers that outlive a test run.
    fn fresh(label: &str) -> (tempfile::TempDir, String) {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        (tempfile::tempdir().unwrap(), format!("{}_{nanos}", unique(label)))
    }

    fn open(config: &Config) -> Box<dyn Store> {
        open_store(config).unwrap_or_else(|e| panic!("opening a {} store: {e}", config.backend))
    }

    fn stored(s: &mut Box<dyn Store>) -> Option<(Vec<u8>, Version)> {
        s.load().unwrap().map(|st| (st.bytes, st.version))
    }

    /// A conditional commit refused as a conflict that names the store's resource.
    fn refused(s: &mut Box<dyn Store>, bytes: &[u8], expect: Expect) {
        match s.commit(bytes, &expect) {
            Err(StoreError::Conflict { resource }) => assert_eq!(resource.to_string(), s.resource().to_string()),
            other => panic!("{}: a commit under {expect:?} must be a conflict, got {other:?}", s.resource()),
        }
    }

    pub fn a_new_store_holds_nothing_and_a_commit_loads_back(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_rt");
        let mut s = open(&config(dir.path(), &name));
        assert_eq!(stored(&mut s), None, "a new store holds nothing");
        let value = "{:a 1, :s \"h\u{e9}llo \u{1F600}\"}".as_bytes();
        let v = s.commit(value, &Expect::Anything { after: None }).unwrap();
        assert_eq!(stored(&mut s), Some((value.to_vec(), v.clone())), "load gives the bytes and the version commit returned");
        let mut reopened = open(&config(dir.path(), &name));
        assert_eq!(stored(&mut reopened), Some((value.to_vec(), v)), "another store on the same resource sees it");
    }

    pub fn every_commit_makes_a_new_version(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_ver");
        let mut s = open(&config(dir.path(), &name));
        let mut seen: Vec<Version> = Vec::new();
        let mut last: Option<Version> = None;
        for (i, value) in [&b"[1]"[..], b"[2]", b"[3]", b"[4]"].into_iter().enumerate() {
            let v = match (i % 2, &last) {
                (0, _) | (_, None) => s.commit(value, &Expect::Anything { after: last.clone() }).unwrap(),
                (_, Some(prev)) => s.commit(value, &Expect::Version(prev.clone())).unwrap(),
            };
            assert!(!seen.contains(&v), "commit {i} repeated an earlier version {v:?}: {seen:?}");
            assert_eq!(stored(&mut s).map(|(_, v)| v), Some(v.clone()));
            seen.push(v.clone());
            last = Some(v);
        }
    }

    pub fn expect_nothing_creates_only_where_nothing_is_stored(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_none");
        let mut a = open(&config(dir.path(), &name));
        let mut b = open(&config(dir.path(), &name));
        let v = a.commit(b"[:a]", &Expect::Nothing).unwrap();
        refused(&mut b, b"[:b]", Expect::Nothing);
        refused(&mut a, b"[:a2]", Expect::Nothing);
        assert_eq!(stored(&mut b), Some((b"[:a]".to_vec(), v)), "a refused create writes nothing");
        a.delete().unwrap();
        let v = b.commit(b"[:b]", &Expect::Nothing).unwrap();
        assert_eq!(stored(&mut a), Some((b"[:b]".to_vec(), v)), "after a delete, a create succeeds");
    }

    pub fn expect_version_refuses_a_stale_version(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_cas");
        let mut a = open(&config(dir.path(), &name));
        let mut b = open(&config(dir.path(), &name));
        let v1 = a.commit(b"[1]", &Expect::Nothing).unwrap();
        let (_, read_by_b) = stored(&mut b).unwrap();
        assert_eq!(read_by_b, v1);
        let v2 = a.commit(b"[2]", &Expect::Version(v1.clone())).unwrap();
        refused(&mut b, b"[3]", Expect::Version(read_by_b));
        refused(&mut a, b"[3]", Expect::Version(v1));
        assert_eq!(stored(&mut b), Some((b"[2]".to_vec(), v2.clone())), "a refused write writes nothing");
        let v3 = b.commit(b"[4]", &Expect::Version(v2)).unwrap();
        assert_eq!(stored(&mut a), Some((b"[4]".to_vec(), v3)), "the current version lets the write through");
    }

    pub fn expect_anything_writes_over_whatever_is_stored(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_any");
        let mut a = open(&config(dir.path(), &name));
        let mut b = open(&config(dir.path(), &name));
        let seen_by_a = a.commit(b"[:a]", &Expect::Anything { after: None }).unwrap();
        b.commit(b"[:b]", &Expect::Anything { after: None }).unwrap();
        // `a` last saw its own version; `b` wrote since: written all the same.
        let v = a.commit(b"[:a2]", &Expect::Anything { after: Some(seen_by_a) }).unwrap();
        assert_eq!(stored(&mut b), Some((b"[:a2]".to_vec(), v)));
    }

    pub fn delete_then_load_finds_nothing(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_del");
        let mut s = open(&config(dir.path(), &name));
        s.delete().unwrap();
        assert_eq!(stored(&mut s), None, "deleting what is not there is no error");
        let v = s.commit(b"[:x]", &Expect::Anything { after: None }).unwrap();
        s.delete().unwrap();
        assert_eq!(stored(&mut s), None);
        assert_eq!(stored(&mut open(&config(dir.path(), &name))), None, "a reopened store finds nothing either");
        s.delete().unwrap();
        refused(&mut s, b"[:y]", Expect::Version(v));
        assert_eq!(stored(&mut s), None, "a refused write after a delete writes nothing");
    }

    pub fn unknown_config_keys_are_refused_at_open(config: impl Fn(&Path, &str) -> Config) {
        let (dir, name) = fresh("c_key");
        let bad = config(dir.path(), &name).with_edn("no-such-setting", "1");
        match open_store(&bad) {
            Err(e @ StoreError::Config { .. }) => {
                assert!(e.to_string().contains("unknown key `no-such-setting`"), "{e}")
            }
            Err(e) => panic!("an unknown key must be a configuration error, got {e:?}"),
            Ok(s) => panic!("{}: opened with an unknown key", s.resource()),
        }
    }
}

/// The `Store` contract as one `#[test]` per rule, in a module
/// `store_contract` of the calling test module. `$config` is an expression
/// of type `Fn(&Path, &str) -> Config` (see `contract`).
#[macro_export]
macro_rules! store_contract_tests {
    ($config:expr) => {
        $crate::store_contract_tests!(@each $config;
            a_new_store_holds_nothing_and_a_commit_loads_back,
            every_commit_makes_a_new_version,
            expect_nothing_creates_only_where_nothing_is_stored,
            expect_version_refuses_a_stale_version,
            expect_anything_writes_over_whatever_is_stored,
            delete_then_load_finds_nothing,
            unknown_config_keys_are_refused_at_open);
    };
    (@each $config:expr; $($name:ident),+) => {
        mod store_contract {
            use super::*;
            use $crate::test_support::contract;
            $(
                #[test]
                fn $name() {
                    contract::$name($config)
                }
            )+
        }
    };
}
