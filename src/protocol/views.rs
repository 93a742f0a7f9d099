//! Borrowed views over the message bodies the proxy reads: Query, Parse, Bind and
//! ErrorResponse. Nothing is copied; a malformed body gives None.

use super::tags::frontend::{PARSE_TAG, QUERY_TAG};

/// Splits a NUL-terminated string off the front of `b`.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, b)?;
    Some((&b[..end], &b[end + 1..]))
}

/// A Parse body: statement name, SQL, then the parameter types (`rest`).
#[derive(Debug, Clone, Copy)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    /// Everything after the name: the SQL and the parameter types, as sent.
    pub after_name: &'a [u8],
    pub sql: &'a [u8],
}

impl<'a> ParseView<'a> {
    pub fn new(body: &'a [u8]) -> Option<Self> {
        let (name, after_name) = cstr(body)?;
        let (sql, _) = cstr(after_name)?;
        Some(ParseView {
            name,
            after_name,
            sql,
        })
    }
}

/// A Bind body: portal, statement, then formats and values (`rest`).
#[derive(Debug, Clone, Copy)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Everything after the statement name, as sent.
    pub rest: &'a [u8],
}

impl<'a> BindView<'a> {
    pub fn new(body: &'a [u8]) -> Option<Self> {
        let (portal, after) = cstr(body)?;
        let (statement, rest) = cstr(after)?;
        Some(BindView {
            portal,
            statement,
            rest,
        })
    }
}

/// The SQL text of a Query body or of a Parse body.
pub fn sql_of(tag: u8, body: &[u8]) -> Option<&str> {
    let text = match tag {
        QUERY_TAG => cstr(body)?.0,
        PARSE_TAG => ParseView::new(body)?.sql,
        _ => return None,
    };
    std::str::from_utf8(text).ok()
}

/// The SQLSTATE and message of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut msg = String::new();
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let (v, after) = cstr(tail).unwrap_or((tail, &[]));
        match t {
            b'C' => code = String::from_utf8_lossy(v).into_owned(),
            b'M' => msg = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
        rest = after;
    }
    (code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_borrow_the_fields_of_a_body() {
        let p = ParseView::new(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!((p.name, p.sql), (&b"s1"[..], &b"select $1"[..]));
        assert_eq!(p.after_name, b"select $1\0\0\x01\0\0\0\x17");
        let b = BindView::new(b"\0s1\0\0\0").unwrap();
        assert_eq!(
            (b.portal, b.statement, b.rest),
            (&b""[..], &b"s1"[..], &b"\0\0"[..])
        );
        assert!(BindView::new(b"p\0s1").is_none());
        assert_eq!(sql_of(b'Q', b"select 1\0"), Some("select 1"));
        assert_eq!(sql_of(b'P', b"\0select 2\0\0\0"), Some("select 2"));
        assert_eq!(sql_of(b'B', b"\0\0"), None);
        assert_eq!(
            error_fields(b"SERROR\0C42P01\0Mno such table\0\0"),
            ("42P01".into(), "no such table".into())
        );
    }
}
