//! What a function's body may touch, from its text: the words that name relations or
//! other functions. A scan, not a parse: it may find a name that is no reference (a
//! comment, a column of the same name), which only makes the rule stricter.

/// Functions of PostgreSQL's own that run SQL given as text: a body calling one may
/// touch any table.
const RUNS_SQL_TEXT: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// What a body's words say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// Any table: it runs SQL built at run time, or its language cannot be read.
    Opaque,
    /// Its lower-cased words, each once: the names it may reference among them.
    Words(Vec<String>),
}

/// Scans a function of `language` with `body` (its source). `immutable`: a function
/// in another language declared IMMUTABLE, which may read no table.
pub(super) fn scan(language: &str, body: &str, immutable: bool) -> Scan {
    let plpgsql = language.eq_ignore_ascii_case("plpgsql");
    if !plpgsql && !language.eq_ignore_ascii_case("sql") {
        return if immutable {
            Scan::Words(Vec::new())
        } else {
            Scan::Opaque
        };
    }
    let mut words = words(body);
    words.sort_unstable();
    words.dedup();
    let dynamic = plpgsql && words.iter().any(|w| w == "execute");
    if dynamic || words.iter().any(|w| RUNS_SQL_TEXT.contains(&w.as_str())) {
        return Scan::Opaque;
    }
    Scan::Words(words)
}

/// Identifier-like words of `text`, lower-cased, quotes taken off.
fn words(text: &str) -> Vec<String> {
    let is_start = |c: char| c.is_alphabetic() || c == '_';
    let is_part = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            let mut w = String::new();
            for (_, c) in chars.by_ref() {
                if c == '"' {
                    break;
                }
                w.push(c);
            }
            out.push(w.to_lowercase());
        } else if is_start(c) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !is_part(d) {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            out.push(text[i..end].to_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(list: &[&str]) -> Scan {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        Scan::Words(v)
    }

    #[test]
    fn bodies_yield_their_words_or_nothing_certain() {
        let cases: &[(&str, &str, bool, Scan)] = &[
            (
                "plpgsql",
                "BEGIN INSERT INTO audit.Log VALUES (NEW.id); RETURN NEW; END",
                false,
                w(&[
                    "audit", "begin", "end", "id", "insert", "into", "log", "new", "return",
                    "values",
                ]),
            ),
            (
                "sql",
                r#"SELECT 1 FROM "My Table""#,
                false,
                w(&["from", "my table", "select"]),
            ),
            // Dynamic SQL can name any table.
            (
                "plpgsql",
                "BEGIN EXECUTE format('DELETE FROM %I', t); END",
                false,
                Scan::Opaque,
            ),
            (
                "sql",
                "SELECT query_to_xml('select * from t', true, true, '')",
                false,
                Scan::Opaque,
            ),
            // A language the proxy cannot read: anything, unless declared IMMUTABLE.
            ("c", "my_symbol", false, Scan::Opaque),
            (
                "plpython3u",
                "plpy.execute('...')",
                true,
                Scan::Words(vec![]),
            ),
            // EXECUTE in an SQL function is no dynamic SQL (there is none).
            (
                "sql",
                "SELECT execute FROM jobs",
                false,
                w(&["execute", "from", "jobs", "select"]),
            ),
        ];
        for (lang, body, immutable, want) in cases {
            assert_eq!(&scan(lang, body, *immutable), want, "{lang}: {body}");
        }
    }
}
