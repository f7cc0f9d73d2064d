//! The table name as SQL identifiers.

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): it truncates longer ones.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The table name as SQL: each part double-quoted, embedded quotes doubled,
/// so whatever the name holds it is an identifier and never SQL.
///
/// For compatibility with the original library, which pasted the name into
/// its SQL unquoted, names are read the way PostgreSQL would have read them
/// there: `schema.table` is schema-qualified, an unquoted plain identifier
/// folds to lower case (`MyTable` is the table `mytable` it created), and a
/// part already written in double quotes (`"MyTable"`) is taken as quoted.
/// Anything else (`t; DROP TABLE x`, `it's`) becomes one literal identifier.
/// A part longer than 63 bytes (after folding) is an error, as PostgreSQL
/// would cut it to 63 bytes and alias it with every name sharing those.
pub(super) fn quote_table(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name.contains('\0') {
        return Err("contains a NUL character".into());
    }
    let parts: Vec<String> = if name.contains('"') {
        match parse_quoted_name(name) {
            Some(parts) => parts,
            // Not valid quoted-name syntax: the whole text is the name.
            None => vec![name.to_string()],
        }
    } else {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(format!("`{name}` has more than one '.'; write `table` or `schema.table`"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{name}` has an empty schema or table part"));
        }
        parts.into_iter().map(fold_plain).collect()
    };
    if let Some(long) = parts.iter().find(|p| p.len() > MAX_IDENTIFIER_BYTES) {
        return Err(format!(
            "`{long}` is {} bytes long; PostgreSQL keeps only the first {MAX_IDENTIFIER_BYTES} bytes of a name, \
             so two long names would silently share one table: use a shorter name",
            long.len()
        ));
    }
    Ok(parts.iter().map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join("."))
}

/// A plain identifier (letters, digits, `_`, `$`, not starting with a digit
/// or `$`) as PostgreSQL folds it when unquoted: ASCII lower case. Any other
/// text is kept exactly.
fn fold_plain(part: &str) -> String {
    if is_plain(part) {
        part.to_ascii_lowercase()
    } else {
        part.to_string()
    }
}

/// Parses `part` or `part.part`, where each part is either `"quoted"` (with
/// `""` for a quote) or a plain identifier. `None` when the text is not
/// exactly that.
fn parse_quoted_name(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = name;
    loop {
        let (part, after) = if let Some(body) = rest.strip_prefix('"') {
            let mut part = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if body[i + 1..].starts_with('"') => {
                        part.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => part.push(c),
                }
            };
            if part.is_empty() {
                return None;
            }
            (part, &body[end..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let raw = &rest[..end];
            if !is_plain(raw) {
                return None;
            }
            (fold_plain(raw), &rest[end..])
        };
        parts.push(part);
        if after.is_empty() {
            break;
        }
        rest = after.strip_prefix('.')?;
        if parts.len() == 2 {
            return None;
        }
    }
    Some(parts)
}

fn is_plain(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_what_postgresql_did_with_the_unquoted_name() {
        let q = |n: &str| quote_table(n);
        assert_eq!(q("my_table").unwrap(), "\"my_table\"");
        assert_eq!(q("MyTable").unwrap(), "\"mytable\"");
        assert_eq!(q("Public.MyTable").unwrap(), "\"public\".\"mytable\"");
        assert_eq!(q("\"MyTable\"").unwrap(), "\"MyTable\"");
        assert_eq!(q("s.\"My.T\"").unwrap(), "\"s\".\"My.T\"");
        assert_eq!(q("t; DROP TABLE x").unwrap(), "\"t; DROP TABLE x\"");
        assert_eq!(q("x\"y").unwrap(), "\"x\"\"y\"");
        assert_eq!(q("\"a\".\"b\".\"c\"").unwrap(), "\"\"\"a\"\".\"\"b\"\".\"\"c\"\"\"", "not a 2-part name: literal");
        assert!(q("a.b.c").is_err());
        assert!(q(".t").is_err());
        assert!(q("  ").is_err());
    }

    #[test]
    fn names_longer_than_postgresql_keeps_are_refused() {
        let at_limit = "t".repeat(63);
        assert_eq!(quote_table(&at_limit).unwrap(), format!("\"{at_limit}\""));
        assert_eq!(quote_table(&format!("s.{at_limit}")).unwrap(), format!("\"s\".\"{at_limit}\""));
        let e = quote_table(&"t".repeat(64)).unwrap_err();
        assert!(e.contains("64 bytes") && e.contains("63"), "{e}");
        assert!(quote_table(&format!("{}.t", "s".repeat(64))).is_err(), "the schema part too");
        // Bytes, not characters: 32 two-byte letters are 64 bytes.
        assert!(quote_table(&"é".repeat(32)).is_err());
        assert!(quote_table(&format!("\"{}\"", "T".repeat(64))).is_err(), "quoted names too");
    }
}
