//! The bus's message format: one tab-separated line per write, versioned so a proxy can
//! ignore messages from a newer (or older) format.

use super::TableWrite;
use crate::consistency::lsn;

/// First field of every message; a proxy ignores messages of a format it doesn't know.
const FORMAT_VERSION: &str = "1";

/// `1 \t origin \t db \t table,table \t X/Y`; db and table names escaped (see `escape`).
pub(super) fn encode(origin: &str, w: &TableWrite) -> String {
    let tables: Vec<String> = w.tables.iter().map(|t| escape(t)).collect();
    format!(
        "{FORMAT_VERSION}\t{origin}\t{}\t{}\t{}",
        escape(&w.db),
        tables.join(","),
        lsn::format(w.lsn)
    )
}

/// The origin proxy id and the write; None for anything not exactly in the format.
pub(super) fn decode(s: &str) -> Option<(String, TableWrite)> {
    let mut fields = s.split('\t');
    if fields.next()? != FORMAT_VERSION {
        return None;
    }
    let origin = fields.next()?.to_string();
    let db = unescape(fields.next()?)?;
    let tables = fields
        .next()?
        .split(',')
        .map(unescape)
        .collect::<Option<Vec<_>>>()?;
    let lsn = lsn::parse(fields.next()?)?;
    if fields.next().is_some() || tables.iter().any(String::is_empty) {
        return None;
    }
    Some((origin, TableWrite { db, tables, lsn }))
}

/// Quoted identifiers may hold any character; the separators become backslash escapes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            ',' => out.push_str("\\c"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'c' => ',',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(db: &str, tables: &[&str], lsn: u64) -> TableWrite {
        TableWrite {
            db: db.into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            lsn,
        }
    }

    #[test]
    fn messages_round_trip_with_odd_names() {
        let w = write(
            "my\tdb",
            &["a,b", "back\\slash", "new\nline", "plain"],
            0x16_B374_D848,
        );
        let text = encode("abc", &w);
        assert_eq!(text.matches('\t').count(), 4);
        assert_eq!(decode(&text), Some(("abc".to_string(), w)));
        assert_eq!(
            encode("p", &write("app", &["t", "u"], 0x1_0000_0010)),
            "1\tp\tapp\tt,u\t1/10"
        );
    }

    #[test]
    fn malformed_messages_are_rejected() {
        for bad in [
            "",
            "2\tp\tapp\tt\t0/1",
            "1\tp\tapp\tt",
            "1\tp\tapp\tt\tnot-an-lsn",
            "1\tp\tapp\tt\t0/1\textra",
            "1\tp\tapp\t\t0/1",
            "1\tp\tapp\tbad\\q\t0/1",
            "1\tp\tapp\ttrailing\\\t0/1",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
