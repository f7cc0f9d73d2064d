//! The configuration a store is opened with, as the JVM hands it over: the
//! UTF-8 text of one EDN map whose keys are keywords, for example
//! `{:backend :local-file, :path "/var/app/state.edn", :raw false}`.
//! `clojure/duratom/storage.clj` writes it from what the
//! `clojure/duratom/backend/*.clj` namespaces make of the constructor's
//! arguments.
//!
//! edn-rs parses the text into an `Edn` value. Each backend then reads its
//! own settings struct out of it with serde ([`Config::settings`]): the
//! structs derive `Deserialize` with `deny_unknown_fields`, so a key that the
//! JVM sends and the backend does not read is an error at open, not a setting
//! silently ignored. edn-rs has a `Deserialize` trait of its own but no serde
//! support, so the small deserializer at the end of this file hands an `Edn`
//! to serde.
//!
//! Where edn-rs (in maintenance mode) falls short, and how this file copes:
//! - map keys come back as the printed form of the key (`:host`, or a string
//!   key in Rust's debug quoting), so only keyword keys are accepted here, and
//!   a map with string keys (S3 user metadata) travels as a vector of
//!   `[name value]` pairs instead;
//! - string escapes: only `\t \r \n \\ \"` are read (no `\b`, `\f` or
//!   `\uXXXX`), so the Clojure side escapes only `\` and `"` and writes every
//!   other character as it is, which EDN allows inside a string;
//! - `Edn::from_str` reads the first form and ignores what follows it, so a
//!   second form is not detected; the JVM side always sends exactly one map.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use edn_rs::Edn;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use crate::store::StoreError;

/// The backend's name and its settings, keyed by keyword name without the
/// colon (`path`, `row-id`, ...).
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: String,
    entries: BTreeMap<String, Edn>,
}

impl Config {
    /// Parses the EDN text the JVM sends. The `:backend` key is required.
    pub fn parse(bytes: &[u8]) -> Result<Config, StoreError> {
        let bad = |detail: String| StoreError::config("duratom", detail);
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("configuration is not UTF-8: {e}")))?;
        let edn = Edn::from_str(text).map_err(|e| bad(format!("configuration is not EDN: {e}")))?;
        let Edn::Map(map) = edn else {
            return Err(bad(format!("configuration must be an EDN map, got `{}`", short(text))));
        };
        let mut entries = BTreeMap::new();
        for (key, value) in map.to_map() {
            let Some(name) = key.strip_prefix(':') else {
                return Err(bad(format!("configuration key `{key}` is not a keyword")));
            };
            entries.insert(name.to_string(), value);
        }
        let backend = match entries.remove("backend") {
            Some(Edn::Key(k)) => k.trim_start_matches(':').to_string(),
            Some(Edn::Str(s)) => s,
            Some(other) => return Err(bad(format!("`backend` must be a keyword, got `{other}`"))),
            None => return Err(bad("configuration names no `backend`".to_string())),
        };
        Ok(Config { backend, entries })
    }

    /// A config from `(key, value)` pairs, for Rust tests and benchmarks:
    /// a value that reads as a whole number or as `true`/`false` becomes one,
    /// anything else a string.
    pub fn from_pairs(backend: &str, pairs: &[(&str, &str)]) -> Config {
        let value = |v: &str| match v {
            "true" => Edn::Bool(true),
            "false" => Edn::Bool(false),
            v => v.parse::<i64>().map(Edn::Int).unwrap_or_else(|_| Edn::Str(v.to_string())),
        };
        Config {
            backend: backend.to_string(),
            entries: pairs.iter().map(|(k, v)| (k.to_string(), value(v))).collect(),
        }
    }

    /// This config with `key` set to the EDN value `edn` (for tests of
    /// values that are not strings or numbers).
    pub fn with_edn(mut self, key: &str, edn: &str) -> Config {
        self.entries.insert(key.to_string(), Edn::from_str(edn).expect("test EDN parses"));
        self
    }

    /// The backend's settings struct, read with serde. Errors (an unknown key,
    /// a missing required key, a value of the wrong type) name the key.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        T::deserialize(EdnDeserializer(Edn::Map(edn_rs::Map::new(
            self.entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))))
        .map_err(|e| StoreError::config(&self.backend, e.0))
    }
}

/// The start of `text`, for an error message.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        s.push_str("...");
    }
    s
}

/// Why a configuration value cannot be read; the message names the key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl de::Error for ConfigError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ConfigError(msg.to_string())
    }

    /// Says what kind of value came, never the value itself: it may be a
    /// password or a secret key sent in the wrong shape.
    fn invalid_type(unexpected: de::Unexpected, expected: &dyn de::Expected) -> Self {
        let got = match unexpected {
            de::Unexpected::Bool(_) => "a boolean",
            de::Unexpected::Unsigned(_) | de::Unexpected::Signed(_) | de::Unexpected::Float(_) => "a number",
            de::Unexpected::Str(_) | de::Unexpected::Char(_) => "a string",
            de::Unexpected::Unit => "nil",
            de::Unexpected::Seq => "a vector",
            de::Unexpected::Map => "a map",
            _ => "another kind of value",
        };
        ConfigError(format!("expected {expected}, got {got}"))
    }

    fn missing_field(field: &'static str) -> Self {
        ConfigError(format!("`{field}` is required"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        ConfigError(format!("unknown key `{field}` (known keys: {})", expected.join(", ")))
    }
}

/// Feeds one `Edn` value to serde. Map keys arrive as edn-rs prints them
/// (`:row-id`) and reach serde as the keyword's name (`row-id`).
struct EdnDeserializer(Edn);

impl<'de> de::Deserializer<'de> for EdnDeserializer {
    type Error = ConfigError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConfigError> {
        match self.0 {
            Edn::Nil => visitor.visit_unit(),
            Edn::Bool(b) => visitor.visit_bool(b),
            Edn::Int(i) => visitor.visit_i64(i),
            Edn::UInt(u) => visitor.visit_u64(u),
            Edn::Str(s) => visitor.visit_string(s),
            Edn::Key(k) => visitor.visit_string(k.trim_start_matches(':').to_string()),
            Edn::Symbol(s) => visitor.visit_string(s),
            ref d @ Edn::Double(_) => visitor.visit_f64(d.to_float().unwrap_or(f64::NAN)),
            Edn::Vector(v) => visitor.visit_seq(Seq(v.to_vec().into_iter())),
            Edn::List(l) => visitor.visit_seq(Seq(l.to_vec().into_iter())),
            Edn::Map(m) => visitor.visit_map(MapAccess { entries: m.to_map().into_iter(), key: None }),
            other => Err(ConfigError(format!("cannot use the EDN value `{other}` in a configuration"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConfigError> {
        match self.0 {
            Edn::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Seq(std::vec::IntoIter<Edn>);

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = ConfigError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ConfigError> {
        self.0.next().map(|e| seed.deserialize(EdnDeserializer(e))).transpose()
    }
}

struct MapAccess {
    entries: std::collections::btree_map::IntoIter<String, Edn>,
    /// The key whose value comes next, and that value.
    key: Option<(String, Edn)>,
}

impl<'de> de::MapAccess<'de> for MapAccess {
    type Error = ConfigError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ConfigError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        let name = key.strip_prefix(':').unwrap_or(&key).to_string();
        let out = seed.deserialize(name.clone().into_deserializer())?;
        self.key = Some((name, value));
        Ok(Some(out))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ConfigError> {
        let (name, value) = self.key.take().ok_or_else(|| ConfigError("a value without a key".into()))?;
        // serde's type errors do not say which key they concern; add it.
        seed.deserialize(EdnDeserializer(value)).map_err(|e| {
            if e.0.contains(&format!("`{name}`")) {
                e
            } else {
                ConfigError(format!("`{name}`: {}", e.0))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Sample {
        path: String,
        row_id: Option<i64>,
        #[serde(default)]
        raw: bool,
        #[serde(default)]
        pairs: Vec<(String, String)>,
    }

    fn sample(text: &str) -> Result<Sample, StoreError> {
        Config::parse(text.as_bytes())?.settings()
    }

    #[test]
    fn reads_an_edn_map_into_a_typed_struct() {
        let c = Config::parse(b"{:backend :local-file, :path \"/tmp/a b\" :raw true}").unwrap();
        assert_eq!(c.backend, "local-file");
        let s = sample("{:backend :local-file :path \"/tmp/\\\"q\\\"\\\\ \u{1F600}\" :row-id -3 :pairs [[\"a\" \"1\"]]}")
            .unwrap();
        assert_eq!(
            s,
            Sample {
                path: "/tmp/\"q\"\\ \u{1F600}".into(),
                row_id: Some(-3),
                raw: false,
                pairs: vec![("a".into(), "1".into())]
            }
        );
        assert_eq!(sample("{:backend :x :path \"p\" :row-id nil}").unwrap().row_id, None);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = sample("{:backend :local-file :path \"p\" :paht \"q\"}").unwrap_err();
        assert!(matches!(e, StoreError::Config { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("local-file") && text.contains("unknown key `paht`"), "{text}");
        assert!(text.contains("path, row-id, raw, pairs"), "lists the known keys: {text}");
    }

    #[test]
    fn wrong_types_and_missing_keys_name_the_key() {
        let e = sample("{:backend :local-file :path \"p\" :row-id \"7\"}").unwrap_err().to_string();
        assert!(e.contains("`row-id`: expected i64, got a string") && !e.contains('7'), "{e}");
        let e = sample("{:backend :local-file :raw true}").unwrap_err().to_string();
        assert!(e.contains("`path` is required"), "{e}");
    }

    #[test]
    fn malformed_configurations_are_clear_errors() {
        for (text, wants) in [
            (&b"{:path \"x\"}"[..], "no `backend`"),
            (b"[:backend :local-file]", "must be an EDN map"),
            (b"{:backend :local-file :path \"x}", "not EDN"),
            (b"{\"backend\" \"local-file\"}", "is not a keyword"),
            (b"{:backend 7}", "`backend` must be a keyword"),
            (b"\xff", "not UTF-8"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(wants), "{}: {e}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn from_pairs_types_numbers_and_flags() {
        let c = Config::from_pairs("local-file", &[("path", "p"), ("row-id", "12"), ("raw", "true")]);
        let s: Sample = c.settings().unwrap();
        assert_eq!((s.row_id, s.raw), (Some(12), true));
    }
}
