//! The native-interface check, shared by `build.rs` and `test/rust/native_abi.rs`: reads the
//! `native` declarations of `java/duratom/Native.java` and the
//! `Java_duratom_Native_*` exports of `rust/jni.rs`, says where they
//! disagree, and computes the native-interface fingerprint.
//!
//! The fingerprint is FNV-1a (64 bits) of the canonical signatures and the
//! crate version. `Native.java` computes the same text by reflection over its
//! own `native` methods (see `Native.expectedFingerprint`), so the two must build
//! it identically: each method as `name(type,type)type` with Java's simple
//! type names (`long`, `byte[]`, `byte[][]`), sorted by name, joined by `;`,
//! then `|` and the crate version.

/// One `native` method as Java declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JavaNative {
    pub name: String,
    pub params: Vec<String>,
    pub ret: String,
}

impl JavaNative {
    pub fn canonical(&self) -> String {
        format!("{}({}){}", self.name, self.params.join(","), self.ret)
    }
}

/// One exported function of `rust/jni.rs`: the method name after
/// `Java_duratom_Native_`, and how many Java arguments it takes (its
/// parameters less `JNIEnv` and the class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustExport {
    pub name: String,
    pub java_args: usize,
}

/// Strips `//` and `/* */` comments and empties string literals (and, in
/// Java, char literals), so that commented-out declarations and words inside
/// messages do not count.
fn strip_comments(src: &str, java: bool) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if c == '"' || (java && c == '\'') {
            // A literal, up to its unescaped closing quote.
            let mut escaped = false;
            let mut end = rest.len();
            for (i, ch) in rest.char_indices().skip(1) {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == c {
                    end = i + 1;
                    break;
                }
            }
            out.push(c);
            out.push(c);
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The `native` method declarations of a Java source.
pub fn java_natives(java: &str) -> Result<Vec<JavaNative>, String> {
    let src = strip_comments(java, true);
    let mut found = Vec::new();
    for statement in src.split(|c| c == ';' || c == '{' || c == '}') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if !words.contains(&"native") {
            continue;
        }
        let text = words.join(" ");
        let open = text.find('(').ok_or_else(|| format!("cannot read the native declaration `{text}`"))?;
        let close = text.rfind(')').ok_or_else(|| format!("cannot read the native declaration `{text}`"))?;
        let head: Vec<&str> = text[..open].split_whitespace().collect();
        let (name, ret) = match head.as_slice() {
            [.., ret, name] => (name.to_string(), ret.to_string()),
            _ => return Err(format!("cannot read the native declaration `{text}`")),
        };
        let mut params = Vec::new();
        for param in text[open + 1..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parts: Vec<&str> = param.split_whitespace().filter(|w| *w != "final").collect();
            match parts.as_slice() {
                [ty, _name] => params.push(ty.replace(' ', "")),
                _ => return Err(format!("cannot read the parameter `{param}` of native method {name}")),
            }
        }
        found.push(JavaNative { name, params, ret });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The `Java_duratom_Native_*` functions a Rust source exports.
pub fn rust_exports(rust: &str) -> Result<Vec<RustExport>, String> {
    const PREFIX: &str = "fn Java_duratom_Native_";
    let src = strip_comments(rust, false);
    let mut found = Vec::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // The parameter list: from the `(` after any generics to its `)`.
        let open = after.find('(').ok_or_else(|| format!("cannot read the export Java_duratom_Native_{name}"))?;
        let close = after[open..].find(')').ok_or_else(|| format!("cannot read the export Java_duratom_Native_{name}"))?;
        let params = after[open + 1..open + close].split(',').filter(|p| !p.trim().is_empty()).count();
        if params < 2 {
            return Err(format!("the export Java_duratom_Native_{name} lacks the JNIEnv and class parameters"));
        }
        found.push(RustExport { name, java_args: params - 2 });
        rest = &after[open + close..];
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Every disagreement between the declarations and the exports, one line
/// each; empty when they agree.
pub fn mismatches(java: &[JavaNative], rust: &[RustExport]) -> Vec<String> {
    let mut out = Vec::new();
    for j in java {
        match rust.iter().find(|r| r.name == j.name) {
            None => out.push(format!(
                "java/duratom/Native.java declares `native {} {}({})` but rust/jni.rs exports no Java_duratom_Native_{}",
                j.ret,
                j.name,
                j.params.join(", "),
                j.name
            )),
            Some(r) if r.java_args != j.params.len() => out.push(format!(
                "Native.{} takes {} argument(s) in java/duratom/Native.java but Java_duratom_Native_{} in rust/jni.rs takes {}",
                j.name,
                j.params.len(),
                j.name,
                r.java_args
            )),
            Some(_) => {}
        }
    }
    for r in rust {
        if !java.iter().any(|j| j.name == r.name) {
            out.push(format!(
                "rust/jni.rs exports Java_duratom_Native_{} but java/duratom/Native.java declares no native method {}",
                r.name, r.name
            ));
        }
    }
    for pair in java.windows(2) {
        if pair[0].name == pair[1].name {
            out.push(format!("java/duratom/Native.java overloads native method {}; JNI short names cannot tell them apart", pair[0].name));
        }
    }
    out
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The text the fingerprint is made of (see the module doc).
pub fn fingerprint_text(java: &[JavaNative], version: &str) -> String {
    let signatures: Vec<String> = java.iter().map(JavaNative::canonical).collect();
    format!("{}|{version}", signatures.join(";"))
}

/// The native-interface fingerprint: 16 hex digits.
pub fn fingerprint(java: &[JavaNative], version: &str) -> String {
    format!("{:016x}", fnv1a64(fingerprint_text(java, version).as_bytes()))
}

/// The value of `CRATE_VERSION = "..."` in a Java source, if any.
pub fn java_crate_version(java: &str) -> Option<String> {
    let at = java.find("CRATE_VERSION = \"")? + "CRATE_VERSION = \"".len();
    let len = java[at..].find('"')?;
    Some(java[at..at + len].to_string())
}
