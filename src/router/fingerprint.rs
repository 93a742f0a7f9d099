//! Query fingerprints (a 64-bit hash of the SQL with literals, comments, whitespace and keyword
//! case normalised, the parse-cache key) and the leading `/* pgwarden:... */` routing hint.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use super::analysis::lexer::{Lexer, Token, TokenKind};
use super::parameterize::{Lifter, Parameterized};

/// Routing hint given by a leading comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// Fingerprint of a query: equal for queries that differ only in literal values (strings,
/// numbers, dollar-quoted bodies), comments, whitespace or the case of unquoted words.
///
/// Single pass over the bytes; the only state is a SipHash hasher and a 128-byte buffer on
/// the stack. SipHash rather than a faster hash because the parse cache is shared by all
/// clients: nobody should be able to craft a query whose fingerprint matches someone else's.
/// Stable within one build of the proxy (do not persist it).
pub fn fingerprint(sql: &str) -> u64 {
    let mut out = FpHasher::new();
    for tok in Lexer::new(sql) {
        out.add(sql.as_bytes(), tok);
    }
    out.finish()
}

/// `fingerprint(sql)` and `parameterize(sql)` from one lexer pass: a simple Query needs
/// both, the first to find its analysis and the second to run it prepared.
pub fn fingerprint_and_lift(sql: &str) -> (u64, Option<Parameterized>) {
    let bytes = sql.as_bytes();
    let mut out = FpHasher::new();
    let mut lifter = Lifter::default();
    for tok in Lexer::new(sql) {
        out.add(bytes, tok);
        lifter.token(bytes, tok);
    }
    (out.finish(), lifter.finish(sql))
}

/// The routing hint, if the query starts (after whitespace) with `/* pgwarden:primary */` or
/// `/* pgwarden:replica */`. Whitespace inside the comment and letter case are ignored.
pub fn leading_hint(sql: &str) -> Option<Hint> {
    let s = sql.trim_start().as_bytes();
    let body = s.strip_prefix(b"/*")?;
    let end = body.windows(2).position(|w| w == b"*/")?;
    let compact = || {
        body[..end]
            .iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_lowercase())
    };
    if compact().eq(b"pgwarden:primary".iter().copied()) {
        Some(Hint::Primary)
    } else if compact().eq(b"pgwarden:replica".iter().copied()) {
        Some(Hint::Replica)
    } else {
        None
    }
}

const BUF: usize = 128;

/// Buffers small writes so SipHash sees a few large ones (much faster than byte-by-byte).
struct FpHasher {
    hasher: DefaultHasher,
    buf: [u8; BUF],
    len: usize,
}

impl FpHasher {
    fn new() -> Self {
        FpHasher {
            hasher: DefaultHasher::new(),
            buf: [0; BUF],
            len: 0,
        }
    }

    /// Makes room for `n` more bytes (`n <= BUF`).
    #[inline]
    fn reserve(&mut self, n: usize) {
        if self.len + n > BUF {
            self.flush();
        }
    }

    #[inline]
    fn push2(&mut self, a: u8, b: u8) {
        self.reserve(2);
        self.buf[self.len] = a;
        self.buf[self.len + 1] = b;
        self.len += 2;
    }

    /// Appends `s`, lower-casing ASCII letters if `fold`. Tokens are short: a byte loop beats
    /// a `memcpy` call for each.
    fn push(&mut self, s: &[u8], fold: bool) {
        if s.len() > BUF {
            for chunk in s.chunks(BUF) {
                self.push(chunk, fold);
            }
            return;
        }
        self.reserve(s.len());
        let dst = &mut self.buf[self.len..self.len + s.len()];
        for (d, &b) in dst.iter_mut().zip(s) {
            *d = if fold { b.to_ascii_lowercase() } else { b };
        }
        self.len += s.len();
    }

    /// A tag, the length, then the bytes: length-prefixed so that token boundaries can never
    /// be confused (`ab` vs `a b`, `<=` vs `< =`).
    fn token(&mut self, tag: u8, text: &[u8], fold: bool) {
        match u8::try_from(text.len()) {
            Ok(n) if n < u8::MAX => self.push2(tag, n),
            _ => {
                self.push2(tag, u8::MAX);
                self.push(&(text.len() as u32).to_le_bytes(), false);
            }
        }
        self.push(text, fold);
    }

    /// Hashes the next token of `bytes` (always inlined: it is called per token).
    #[inline(always)]
    fn add(&mut self, bytes: &[u8], tok: Token) {
        let text = &bytes[tok.start..tok.end];
        match tok.kind {
            TokenKind::Word => self.token(1, text, true),
            TokenKind::QuotedIdent => self.token(2, text, false),
            TokenKind::Literal => self.push(&[3], false),
            TokenKind::Param => self.token(4, text, false),
            TokenKind::Operator => self.token(5, text, false),
            TokenKind::Punct => self.push2(6, text[0]),
        }
    }

    fn flush(&mut self) {
        self.hasher.write(&self.buf[..self.len]);
        self.len = 0;
    }

    fn finish(mut self) -> u64 {
        self.flush();
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) {
        assert_eq!(
            fingerprint(a),
            fingerprint(b),
            "expected same: {a:?} vs {b:?}"
        );
    }

    fn differ(a: &str, b: &str) {
        assert_ne!(
            fingerprint(a),
            fingerprint(b),
            "expected different: {a:?} vs {b:?}"
        );
    }

    #[test]
    fn literals_are_normalised() {
        same(
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 12345",
        );
        same(
            "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = 'it''s long'",
        );
        same(
            "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = E'a\\'b'",
        );
        same(
            "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = $$x;y$$",
        );
        same("SELECT $f$ a $$ b $f$", "SELECT 'z'");
        same("SELECT 1.5e10, .5, 0x1F, 1_000", "SELECT 2, 3, 4, 5");
        same(
            "UPDATE t SET a = a + 42 WHERE id = 7",
            "UPDATE t SET a = a + 1 WHERE id = 9",
        );
        same(
            "SELECT * FROM t WHERE a = -1",
            "SELECT * FROM t WHERE a = 1",
        );
        same("SELECT * FROM t WHERE a=-1", "SELECT * FROM t WHERE a = 1");
        same(
            "INSERT INTO t VALUES (-1, 'a')",
            "INSERT INTO t VALUES (2, 'b')",
        );
    }

    #[test]
    fn comments_whitespace_and_case_are_normalised() {
        same("SELECT a FROM t", "select   A\n\tfrom T");
        same(
            "SELECT a FROM t -- trailing",
            "SELECT a /* x /* nested */ y */ FROM t",
        );
        same("/* pgwarden:replica */ SELECT 1", "SELECT 1");
        same("SELECT a+b FROM t", "SELECT a + b FROM t");
    }

    #[test]
    fn long_tokens_span_buffer_flushes() {
        let long = "Abc".repeat(200);
        same(
            &format!("SELECT {long} FROM t"),
            &format!("select {} from T", long.to_lowercase()),
        );
        differ(
            &format!("SELECT {long}x FROM t"),
            &format!("SELECT {long}y FROM t"),
        );
        differ(
            &format!("SELECT \"{long}\""),
            &format!("SELECT \"{}\"", long.to_lowercase()),
        );
    }

    #[test]
    fn structure_and_identifiers_differ() {
        differ("SELECT * FROM t1", "SELECT * FROM t2");
        differ("SELECT a FROM t", "SELECT b FROM t");
        differ("SELECT * FROM \"T\"", "SELECT * FROM t");
        differ("SELECT * FROM \"T\"", "SELECT * FROM \"t\"");
        differ("SELECT a FROM t", "SELECT a, b FROM t");
        differ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a < 1");
        differ(
            "SELECT * FROM t WHERE a <= 1",
            "SELECT * FROM t WHERE a < = 1",
        );
        differ("SELECT a - 1 FROM t", "SELECT a FROM t");
        differ("SELECT * FROM t", "SELECT * FROM t FOR UPDATE");
        differ("SELECT ab FROM t", "SELECT a b FROM t");
        differ("SELECT $1", "SELECT $2");
        differ("SELECT $1", "SELECT 1");
        differ("SELECT 'a'", "SELECT \"a\"");
    }

    #[test]
    fn one_pass_gives_what_two_do() {
        let many = (1..=40)
            .map(|i| format!("c{i} = {}", 1000 + i))
            .collect::<Vec<_>>()
            .join(" and ");
        let many = format!("select * from t where {many}");
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 57203;",
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 98765;",
            "select * from t where a = -42 and b >= 3000000000 and c < -2147483648",
            "select * from t where id =-1234",
            "SELECT * FROM t WHERE (a + b) > 100 ORDER BY 2 LIMIT 20 OFFSET 400",
            "select * from t where k = 7 and id = 123",
            "select * from t where k = 7",
            "select * from t where name = 'bob' and id = 1234",
            "select * from t where id = 1234 and x = $1",
            "select * from t where id = 123::bigint and k = 5000",
            "insert into t values (1234, 5678)",
            "select * from t where id = 99999999999999999999",
            r#"select * from t where "Id" = 1234 -- c"#,
            "/* pgwarden:replica */ SELECT 1",
            "",
            &many,
        ] {
            assert_eq!(
                fingerprint_and_lift(sql),
                (
                    fingerprint(sql),
                    crate::router::parameterize::parameterize(sql)
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn hints() {
        assert_eq!(
            leading_hint("/* pgwarden:primary */ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(
            leading_hint("  \n/*pgwarden:replica*/SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(
            leading_hint("/*  PGWarden : Replica  */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(leading_hint("SELECT 1 /* pgwarden:primary */"), None);
        assert_eq!(
            leading_hint("/* other */ /* pgwarden:primary */ SELECT 1"),
            None
        );
        assert_eq!(leading_hint("/* pgwarden:primary"), None);
        assert_eq!(leading_hint("/* pgwarden:secondary */ SELECT 1"), None);
        assert_eq!(leading_hint(""), None);
    }
}
