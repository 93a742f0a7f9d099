//! Turns a simple-protocol statement into one with parameters, so the proxy can run
//! it as a server-side prepared statement (parsed and planned once per connection).
//! Only integer literals in places where they are plainly values are lifted (operands of a
//! comparison or arithmetic, LIMIT/OFFSET, whole elements of a VALUES row), each typed
//! exactly as PostgreSQL types the literal, and the text keeps every other byte at its
//! offset so error positions still point at the client's own SQL.

use super::analysis::lexer::{Lexer, Token, TokenKind};
use std::fmt::Write;
use std::ops::Range;

/// PostgreSQL type OIDs of the parameters we create.
pub const INT4_OID: u32 = 23;
pub const INT8_OID: u32 = 20;

/// More parameters than this: not worth a statement of its own.
const MAX_PARAMS: usize = 32;

/// Literals left in the text must be short (at most this many bytes): their values then
/// have few variants, so the set of statement texts stays small.
const MAX_INLINE_LITERAL: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameterized {
    /// The SQL with `$n` (padded with spaces to the literal's length) for each lifted literal.
    pub sql: String,
    /// One type OID per parameter.
    pub types: Vec<u32>,
    /// Where each parameter's value (its digits, sign included) sits in the original SQL.
    pub values: Vec<Range<usize>>,
}

/// The type PostgreSQL gives an integer literal written as `text` (optional `-`, digits):
/// int4 when the digits fit in int4, int8 when they fit in int8, else numeric (None). The
/// sign does not count: PostgreSQL types the digits first, then negates.
fn integer_type(text: &[u8]) -> Option<u32> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    if value <= i32::MAX as u64 {
        Some(INT4_OID)
    } else if value <= i64::MAX as u64 {
        Some(INT8_OID)
    } else {
        None
    }
}

/// Operators whose right operand is plainly a value: comparisons (and `col = 5` in
/// UPDATE's SET) and arithmetic.
fn takes_value(op: &[u8]) -> bool {
    matches!(
        op,
        b"=" | b"<>" | b"!=" | b"<" | b">" | b"<=" | b">=" | b"+" | b"-" | b"*" | b"/"
    )
}

/// Whether a token ends a column reference or a parenthesised expression, so that
/// `<it> <operator> <literal>` applies the operator to a value and the literal.
fn ends_operand(kind: TokenKind, text: &[u8]) -> bool {
    match kind {
        TokenKind::Word => !is_keyword_before_value(text),
        TokenKind::QuotedIdent => true,
        TokenKind::Punct => text == b")",
        _ => false,
    }
}

/// Words that can precede a comparison operator without being an operand.
fn is_keyword_before_value(w: &[u8]) -> bool {
    [
        &b"where"[..],
        b"and",
        b"or",
        b"not",
        b"on",
        b"having",
        b"when",
        b"then",
        b"else",
        b"select",
        b"set",
    ]
    .iter()
    .any(|k| w.eq_ignore_ascii_case(k))
}

/// What routing learnt of a Query's parameterised form (auto_prepare), found in the
/// same lexer pass as its fingerprint, so the relay need not lex it again.
#[derive(Debug, Default)]
pub enum Lift {
    /// Not looked for: lex the SQL when it is needed.
    #[default]
    Unknown,
    /// The Query has no parameterised form.
    NotLiftable,
    Lifted(Parameterized),
}

impl Lift {
    pub fn from_lexed(found: Option<Parameterized>) -> Lift {
        found.map_or(Lift::NotLiftable, Lift::Lifted)
    }

    /// The parameterised form of `sql`, lexing it only if routing did not.
    pub fn resolve(self, sql: &str) -> Option<Parameterized> {
        match self {
            Lift::Unknown => parameterize(sql),
            Lift::NotLiftable => None,
            Lift::Lifted(p) => Some(p),
        }
    }
}

/// The parameterised form of `sql`, or None when it has a literal that cannot be lifted
/// safely (strings, decimals, long integers outside a comparison or LIMIT/OFFSET), already
/// has `$n` references, or has nothing to lift.
pub fn parameterize(sql: &str) -> Option<Parameterized> {
    let mut lifter = Lifter::default();
    for tok in Lexer::new(sql) {
        if !lifter.token(sql.as_bytes(), tok) {
            return None;
        }
    }
    lifter.finish(sql)
}

/// `parameterize` fed one token at a time, so that the one lexer pass a request gets can
/// also feed its fingerprint. Nothing is allocated until a literal is lifted.
#[derive(Default)]
pub(crate) struct Lifter {
    types: Vec<u32>,
    values: Vec<Range<usize>>,
    /// The two previous tokens.
    prev: Option<Token>,
    prev2: Option<Token>,
    refused: bool,
    /// Inside a VALUES list: parentheses open since its keyword (a row's elements are
    /// at 1). Nothing is counted before a VALUES keyword.
    in_values: Option<u32>,
    /// A literal that opens or follows a comma in a VALUES row, lifted if the next token
    /// ends it (`,` or `)`): a whole element, not part of an expression. Its type.
    pending: Option<(Range<usize>, u32)>,
}

impl Lifter {
    /// Takes the next token of `bytes`; false once the statement cannot be lifted.
    // Always inlined: called per token, and a call each costs -N's in-block writes ~2%.
    #[inline(always)]
    pub(crate) fn token(&mut self, bytes: &[u8], tok: Token) -> bool {
        if self.refused {
            return false;
        }
        let text = &bytes[tok.start..tok.end];
        if let Some((range, ty)) = self.pending.take() {
            if tok.kind == TokenKind::Punct && matches!(text, b"," | b")") {
                self.lift(range, ty);
            } else if range.len() > MAX_INLINE_LITERAL {
                self.refused = true;
                return false;
            }
        }
        self.follow_values(tok.kind, text);
        match tok.kind {
            TokenKind::Param => self.refused = true,
            TokenKind::Literal => {
                let ty = integer_type(text);
                let after_operator = matches!(self.prev, Some(t) if t.kind == TokenKind::Operator && takes_value(&bytes[t.start..t.end]))
                    && matches!(self.prev2, Some(t) if ends_operand(t.kind, &bytes[t.start..t.end]));
                let after_limit = matches!(self.prev, Some(t) if t.kind == TokenKind::Word
                    && (bytes[t.start..t.end].eq_ignore_ascii_case(b"limit") || bytes[t.start..t.end].eq_ignore_ascii_case(b"offset")));
                // A literal glued to a following word or `.`/`::` is not a plain value.
                let glued = matches!(bytes.get(tok.end), Some(c) if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.' || *c == b':' || *c == b'$');
                let row_element = self.in_values == Some(1)
                    && matches!(self.prev, Some(t) if t.kind == TokenKind::Punct && matches!(&bytes[t.start..t.end], b"(" | b","));
                let placeholder_len = placeholder_len(self.types.len() + 1);
                match ty {
                    Some(ty) if !glued && text.len() >= placeholder_len && row_element => {
                        self.pending = Some((tok.start..tok.end, ty));
                    }
                    Some(ty)
                        if (after_operator || after_limit)
                            && !glued
                            && text.len() >= placeholder_len =>
                    {
                        self.lift(tok.start..tok.end, ty);
                    }
                    Some(_) if text.len() <= MAX_INLINE_LITERAL => {}
                    _ => self.refused = true,
                }
            }
            _ => {}
        }
        self.prev2 = self.prev;
        self.prev = Some(tok);
        !self.refused
    }

    fn lift(&mut self, value: Range<usize>, ty: u32) {
        if self.types.len() == MAX_PARAMS {
            self.refused = true;
        } else {
            self.types.push(ty);
            self.values.push(value);
        }
    }

    /// Follows a VALUES list from its keyword until a word at the keyword's own depth
    /// (ON CONFLICT, RETURNING) or a parenthesis closing around it.
    #[inline(always)]
    fn follow_values(&mut self, kind: TokenKind, text: &[u8]) {
        match (kind, self.in_values) {
            (TokenKind::Word, _) if text.eq_ignore_ascii_case(b"values") => {
                self.in_values = Some(0)
            }
            (_, None) => {}
            (TokenKind::Punct, Some(d)) if text == b"(" => self.in_values = Some(d + 1),
            (TokenKind::Punct, Some(d)) if text == b")" => self.in_values = d.checked_sub(1),
            (TokenKind::Word, Some(0)) => self.in_values = None,
            _ => {}
        }
    }

    /// The parameterised `sql` (the text every token came from), if anything was lifted.
    pub(crate) fn finish(self, sql: &str) -> Option<Parameterized> {
        // A literal still waiting for the end of its VALUES element was not one.
        let unfinished = self
            .pending
            .as_ref()
            .is_some_and(|(r, _)| r.len() > MAX_INLINE_LITERAL);
        if self.refused || unfinished || self.types.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(sql.len());
        let mut copied = 0;
        for (i, value) in self.values.iter().enumerate() {
            out.push_str(&sql[copied..value.start]);
            let n = i + 1;
            let _ = write!(out, "${n}");
            out.extend(std::iter::repeat_n(' ', value.len() - placeholder_len(n)));
            copied = value.end;
        }
        out.push_str(&sql[copied..]);
        Some(Parameterized {
            sql: out,
            types: self.types,
            values: self.values,
        })
    }
}

/// The length of `$n`: parameters number at most MAX_PARAMS, so one or two digits.
fn placeholder_len(n: usize) -> usize {
    if n < 10 {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifted(sql: &str) -> Option<(String, Vec<u32>, Vec<&str>)> {
        parameterize(sql).map(|p| {
            let vals = p.values.iter().map(|r| &sql[r.clone()]).collect();
            (p.sql, p.types, vals)
        })
    }

    #[test]
    fn lifts_a_key_lookup_keeping_every_offset() {
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 57203;";
        let (text, types, vals) = lifted(sql).unwrap();
        assert_eq!(
            text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1   ;"
        );
        assert_eq!(text.len(), sql.len());
        assert_eq!(types, vec![INT4_OID]);
        assert_eq!(vals, vec!["57203"]);
    }

    #[test]
    fn types_integers_as_postgresql_does() {
        let (_, types, vals) =
            lifted("select * from t where a = -42 and b >= 3000000000 and c < -2147483648")
                .unwrap();
        assert_eq!(types, vec![INT4_OID, INT8_OID, INT8_OID]);
        assert_eq!(vals, vec!["-42", "3000000000", "-2147483648"]);
        // PostgreSQL splits `=-` into `=` and a sign, as the lexer does.
        let (text, _, vals) = lifted("select * from t where id =-1234").unwrap();
        assert_eq!(
            (text.as_str(), vals),
            ("select * from t where id =$1   ", vec!["-1234"])
        );
        // Beyond int8 PostgreSQL makes it numeric: left alone, and too long to inline.
        assert!(lifted("select * from t where a = 99999999999999999999").is_none());
    }

    #[test]
    fn lifts_limit_offset_and_parenthesised_operands() {
        let (text, types, _) =
            lifted("SELECT * FROM t WHERE (a + b) > 100 ORDER BY 2 LIMIT 20 OFFSET 400").unwrap();
        assert_eq!(
            text,
            "SELECT * FROM t WHERE (a + b) > $1  ORDER BY 2 LIMIT $2 OFFSET $3 "
        );
        assert_eq!(types.len(), 3);
    }

    #[test]
    fn short_literals_stay_in_the_text() {
        // `$1` is longer than `7`: it stays, so offsets hold and variants are few.
        let (text, _, vals) = lifted("select * from t where k = 7 and id = 123").unwrap();
        assert_eq!(text, "select * from t where k = 7 and id = $1 ");
        assert_eq!(vals, vec!["123"]);
        assert!(lifted("select * from t where k = 7").is_none());
    }

    #[test]
    fn refuses_what_is_not_plainly_an_integer_value() {
        for sql in [
            "select * from t where name = 'bob'",
            "select * from t where x = 1.5 and id = 123",
            "select * from t where id = $1",
            "select * from t where id in (123, 456)",
            "select 12345 from t where id = 123",
            "select * from t where id = 123::bigint and k = 5000",
            "select * from t where id = 12e3",
            "select * from t where id = 1000 order by 1000",
            "select * from t where 1234 = id",
            "select * from t where id = 1000 % 7000",
            "insert into t values (1234, 'bob')",
            "insert into t values (1234 + x, 5678)",
            "insert into t values (f(1234), 5678)",
            "insert into t values (1234::int8, 5678)",
            "insert into t values (1234, 5678) returning 1000",
            "select * from t where id in (select 1234 from u) and k = 5678",
            "select '2020-01-01'::date",
        ] {
            assert!(lifted(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn lifts_arithmetic_operands_and_assignments() {
        let sql = "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 98765;";
        let (text, types, vals) = lifted(sql).unwrap();
        assert_eq!(
            text,
            "UPDATE pgbench_accounts SET abalance = abalance + $1    WHERE aid = $2   ;"
        );
        assert_eq!(
            (types, vals),
            (vec![INT4_OID, INT4_OID], vec!["-1234", "98765"])
        );
        let (text, _, _) = lifted("update t set n = 5000, m = m * 300 where id - 100 > 0").unwrap();
        assert_eq!(
            text,
            "update t set n = $1  , m = m * $2  where id - $3  > 0"
        );
    }

    #[test]
    fn lifts_whole_elements_of_values_rows() {
        let sql = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                   VALUES (5, 1, 12345, -2345, CURRENT_TIMESTAMP);";
        let (text, types, vals) = lifted(sql).unwrap();
        assert_eq!(
            text,
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (5, 1, $1   , $2   , CURRENT_TIMESTAMP);"
        );
        assert_eq!(
            (types, vals),
            (vec![INT4_OID, INT4_OID], vec!["12345", "-2345"])
        );
        let (text, types, _) =
            lifted("insert into t values (1234, 3000000000), (5678, 7) on conflict (k) do update set v = 9999")
                .unwrap();
        assert_eq!(
            text,
            "insert into t values ($1  , $2        ), ($3  , 7) on conflict (k) do update set v = $4  "
        );
        assert_eq!(types, vec![INT4_OID, INT8_OID, INT4_OID, INT4_OID]);
        // A VALUES list in FROM, and ORDER BY's column number after it stays.
        let (text, _, _) = lifted("select * from (values (1234), (5678)) v(x) order by 1").unwrap();
        assert_eq!(
            text,
            "select * from (values ($1  ), ($2  )) v(x) order by 1"
        );
    }

    #[test]
    fn keywords_are_not_operands() {
        assert!(lifted("select * from t where not = 1234").is_none());
        let (text, _, _) = lifted(r#"select * from t where "Id" = 1234"#).unwrap();
        assert_eq!(text, r#"select * from t where "Id" = $1  "#);
    }
}
