//! The configuration a store is opened with, as the JVM hands it over.
//!
//! On the wire it is UTF-8 text of `key NUL value NUL key NUL value ...`: flat,
//! with no escaping to get wrong (no path, host, password or bucket name can
//! contain NUL). The Clojure side has already turned db-specs and credential
//! maps into these flat keys; see `clojure/duratom/config.clj`.

use std::collections::HashMap;

use crate::store::StoreError;

/// A flat map of settings, with the backend name kept for error messages.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: String,
    entries: HashMap<String, String>,
}

impl Config {
    /// Parses the wire form. The `backend` key is required.
    pub fn parse(bytes: &[u8]) -> Result<Config, StoreError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| StoreError::config("duratom", format!("configuration is not UTF-8: {e}")))?;
        let mut fields = text.split('\0');
        let mut entries = HashMap::new();
        while let Some(key) = fields.next() {
            if key.is_empty() {
                continue; // the trailing separator
            }
            let value = fields.next().ok_or_else(|| {
                StoreError::config("duratom", format!("configuration key `{key}` has no value"))
            })?;
            entries.insert(key.to_string(), value.to_string());
        }
        let backend = entries
            .remove("backend")
            .ok_or_else(|| StoreError::config("duratom", "configuration names no `backend`"))?;
        Ok(Config { backend, entries })
    }

    /// Builds a config from pairs (for Rust tests and benchmarks).
    pub fn from_pairs(backend: &str, pairs: &[(&str, &str)]) -> Config {
        Config {
            backend: backend.to_string(),
            entries: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&str, StoreError> {
        self.get(key)
            .ok_or_else(|| StoreError::config(&self.backend, format!("`{key}` is required")))
    }

    /// A whole number, if present; a clear error naming the key if malformed.
    pub fn number(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                StoreError::config(&self.backend, format!("`{key}` must be a whole number, got `{v}`"))
            }),
        }
    }

    /// `true`/`false`, absent meaning `default`.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, StoreError> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(StoreError::config(&self.backend, format!("`{key}` must be true or false, got `{v}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_names_missing_values() {
        let c = Config::parse(b"backend\0local-file\0path\0/tmp/a b\0").unwrap();
        assert_eq!(c.backend, "local-file");
        assert_eq!(c.get("path"), Some("/tmp/a b"));
        let e = Config::parse(b"backend\0local-file\0path").unwrap_err();
        assert!(e.to_string().contains("`path` has no value"), "{e}");
        let e = Config::parse(b"path\0x").unwrap_err();
        assert!(e.to_string().contains("no `backend`"), "{e}");
    }

    #[test]
    fn numbers_and_flags_name_the_bad_key() {
        let c = Config::from_pairs("postgres-db", &[("port", "54x"), ("shared", "yes")]);
        assert!(c.number("port").unwrap_err().to_string().contains("`port`"));
        assert!(c.flag("shared", false).unwrap_err().to_string().contains("`shared`"));
    }
}
