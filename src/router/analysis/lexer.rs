//! A small PostgreSQL lexer (token boundaries and kinds only), shared by the fingerprint and
//! by the analysis fallback that splits a string into statements, so both agree on where
//! strings, quoted identifiers, comments and dollar quotes end.

/// What a lexer token is; comments and whitespace are never returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"..."` identifier, quotes included.
    QuotedIdent,
    /// String (`'..'`, `E'..'`, `$tag$..$tag$`) or numeric literal, including a folded unary minus.
    Literal,
    /// `$1` parameter reference.
    Param,
    /// A PostgreSQL operator (`=`, `<=`, `||`, `->>`...).
    Operator,
    /// One punctuation byte: `( ) [ ] , ; : .` or anything else not covered above.
    Punct,
}

/// A token as a byte range of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

/// Lexer following PostgreSQL's scan.l closely enough to find token boundaries; it never fails
/// (an unterminated string or comment runs to the end of the input).
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// Whether the previous token can end an operand; decides if `-` before a digit is a sign
    /// (folded into the literal, so `x = -1` and `x = 1` fingerprint alike) or subtraction.
    prev_operand: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer {
            src: sql.as_bytes(),
            pos: 0,
            prev_operand: false,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.at(self.pos) == b'-' && self.at(self.pos + 1) == b'-' {
                while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if self.at(self.pos) == b'/' && self.at(self.pos + 1) == b'*' {
                self.pos = skip_block_comment(self.src, self.pos);
            } else {
                return;
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip_space_and_comments();
        let start = self.pos;
        let src = self.src;
        let c = *src.get(start)?;
        let (kind, end) = match c {
            b'\'' => (
                TokenKind::Literal,
                scan_quoted(src, start + 1, b'\'', false),
            ),
            b'"' => (
                TokenKind::QuotedIdent,
                scan_quoted(src, start + 1, b'"', false),
            ),
            b'$' if self.at(start + 1).is_ascii_digit() => {
                (TokenKind::Param, scan_digits(src, start + 1))
            }
            b'$' => match dollar_tag_end(src, start) {
                Some(tag_end) => (TokenKind::Literal, scan_dollar_body(src, start, tag_end)),
                None => (TokenKind::Punct, start + 1),
            },
            b'0'..=b'9' => (TokenKind::Literal, scan_number(src, start)),
            b'.' if self.at(start + 1).is_ascii_digit() => {
                (TokenKind::Literal, scan_number(src, start))
            }
            c if is_ident_start(c) => {
                let end = scan_word(src, start);
                if end == start + 1 && (c == b'e' || c == b'E') && self.at(end) == b'\'' {
                    // E'...' escape string: backslash escapes the next byte.
                    (TokenKind::Literal, scan_quoted(src, end + 1, b'\'', true))
                } else {
                    (TokenKind::Word, end)
                }
            }
            c if is_op_char(c) => {
                let end = scan_operator(src, start);
                let sign = end == start + 1 && c == b'-' && !self.prev_operand;
                let next = self.at(end);
                if sign
                    && (next.is_ascii_digit()
                        || (next == b'.' && self.at(end + 1).is_ascii_digit()))
                {
                    (TokenKind::Literal, scan_number(src, end))
                } else {
                    (TokenKind::Operator, end)
                }
            }
            _ => (TokenKind::Punct, start + 1),
        };
        self.pos = end;
        self.prev_operand = match kind {
            TokenKind::Word | TokenKind::QuotedIdent | TokenKind::Literal | TokenKind::Param => {
                true
            }
            TokenKind::Punct => c == b')' || c == b']',
            TokenKind::Operator => false,
        };
        Some(Token { kind, start, end })
    }
}

const IDENT_START: u8 = 1;
const IDENT_CONT: u8 = 2;
const OP: u8 = 4;

/// Byte classes in one table: the lexer runs on every query, and one lookup per byte is
/// cheaper than a chain of comparisons.
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            t[c] = IDENT_START | IDENT_CONT;
        } else if b.is_ascii_digit() || b == b'$' {
            t[c] = IDENT_CONT;
        }
        c += 1;
    }
    let ops = b"+-*/<>=~!@#%^&|`?";
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] = OP;
        i += 1;
    }
    t
};

fn is_ident_start(c: u8) -> bool {
    CLASSES[c as usize] & IDENT_START != 0
}

fn is_ident_cont(c: u8) -> bool {
    CLASSES[c as usize] & IDENT_CONT != 0
}

fn is_op_char(c: u8) -> bool {
    CLASSES[c as usize] & OP != 0
}

/// End of a `/* */` comment starting at `start`; PostgreSQL comments nest.
fn skip_block_comment(src: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < src.len() {
        if src[i] == b'/' && src.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if src[i] == b'*' && src.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    src.len()
}

/// End (exclusive) of a quoted token whose body starts at `i`; a doubled quote is an escaped
/// quote, and with `backslash` a backslash escapes the following byte.
fn scan_quoted(src: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < src.len() {
        let c = src[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if src.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    src.len()
}

fn scan_digits(src: &[u8], mut i: usize) -> usize {
    while i < src.len() && src[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn scan_word(src: &[u8], mut i: usize) -> usize {
    while i < src.len() && is_ident_cont(src[i]) {
        i += 1;
    }
    i
}

/// Numbers: `42`, `1_000`, `3.14`, `.5`, `1e-3`, `0x1F`, `0o17`, `0b101`.
fn scan_number(src: &[u8], start: usize) -> usize {
    let at = |i: usize| src.get(i).copied().unwrap_or(0);
    let mut i = start;
    if at(i) == b'0' && matches!(at(i + 1), b'x' | b'X' | b'o' | b'O' | b'b' | b'B') {
        i += 2;
        while at(i).is_ascii_alphanumeric() || at(i) == b'_' {
            i += 1;
        }
        return i;
    }
    while at(i).is_ascii_digit() || at(i) == b'_' {
        i += 1;
    }
    // `1..2` is not a decimal point followed by `.2`; leave the dots alone.
    if at(i) == b'.' && at(i + 1) != b'.' {
        i += 1;
        while at(i).is_ascii_digit() || at(i) == b'_' {
            i += 1;
        }
    }
    if matches!(at(i), b'e' | b'E') {
        let digits = if matches!(at(i + 1), b'+' | b'-') {
            i + 2
        } else {
            i + 1
        };
        if at(digits).is_ascii_digit() {
            i = scan_digits(src, digits);
        }
    }
    i
}

/// If a dollar-quote opening tag (`$$` or `$tag$`) starts at `start`, the index just past it.
fn dollar_tag_end(src: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < src.len() && src[i] != b'$' {
        if !is_ident_start(src[i]) {
            return None;
        }
        while i < src.len() && (is_ident_start(src[i]) || src[i].is_ascii_digit()) {
            i += 1;
        }
    }
    (src.get(i) == Some(&b'$')).then_some(i + 1)
}

/// End of a dollar-quoted string whose opening tag is `src[start..tag_end]`.
fn scan_dollar_body(src: &[u8], start: usize, tag_end: usize) -> usize {
    let tag = &src[start..tag_end];
    src[tag_end..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(src.len(), |p| tag_end + p + tag.len())
}

/// An operator per PostgreSQL's rules: the longest run of operator characters, cut before
/// an embedded comment start, and not ending in `+`/`-` unless it contains one of
/// `~!@#%^&|`?` (so `=-1` is `=` followed by `-1`).
fn scan_operator(src: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < src.len() && is_op_char(src[end]) {
        if end > start
            && ((src[end] == b'-' && src.get(end + 1) == Some(&b'-'))
                || (src[end] == b'/' && src.get(end + 1) == Some(&b'*')))
        {
            break;
        }
        end += 1;
    }
    if end - start > 1 && !src[start..end].iter().any(|c| b"~!@#%^&|`?".contains(c)) {
        while end - start > 1 && matches!(src[end - 1], b'+' | b'-') {
            end -= 1;
        }
    }
    end
}

/// Splits `sql` into statement texts at top-level `;` (not inside strings, quoted identifiers,
/// dollar quotes or comments). Each piece is trimmed to its first and last token; empty
/// statements are dropped.
pub(crate) fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut first: Option<usize> = None;
    let mut last = 0;
    for tok in Lexer::new(sql) {
        if tok.kind == TokenKind::Punct && sql.as_bytes()[tok.start] == b';' {
            if let Some(s) = first.take() {
                out.push(&sql[s..last]);
            }
        } else {
            first.get_or_insert(tok.start);
            last = tok.end;
        }
    }
    if let Some(s) = first {
        out.push(&sql[s..last]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        Lexer::new(sql)
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    #[test]
    fn lexer_tokens() {
        use TokenKind::*;
        assert_eq!(
            kinds("SELECT t1.a, $1, 'x''y' FROM \"Q\"\"x\" WHERE b>=-2.5"),
            vec![
                (Word, "SELECT"),
                (Word, "t1"),
                (Punct, "."),
                (Word, "a"),
                (Punct, ","),
                (Param, "$1"),
                (Punct, ","),
                (Literal, "'x''y'"),
                (Word, "FROM"),
                (QuotedIdent, "\"Q\"\"x\""),
                (Word, "WHERE"),
                (Word, "b"),
                (Operator, ">="),
                (Literal, "-2.5"),
            ]
        );
        assert_eq!(
            kinds("a$b e'\\''"),
            vec![(Word, "a$b"), (Literal, "e'\\''")]
        );
        assert_eq!(
            kinds("x -- c\n- 1"),
            vec![(Word, "x"), (Operator, "-"), (Literal, "1")]
        );
        assert_eq!(kinds("'unterminated"), vec![(Literal, "'unterminated")]);
        assert_eq!(
            kinds("a::int"),
            vec![(Word, "a"), (Punct, ":"), (Punct, ":"), (Word, "int")]
        );
        assert_eq!(
            kinds("j->>'k'"),
            vec![(Word, "j"), (Operator, "->>"), (Literal, "'k'")]
        );
    }

    #[test]
    fn splits_statements_outside_quotes() {
        assert_eq!(
            split_statements("SELECT ';'; DO $$ BEGIN x; END $$ ;; -- c;\n /* ; */ SELECT 2"),
            vec!["SELECT ';'", "DO $$ BEGIN x; END $$", "SELECT 2"]
        );
        assert!(split_statements(" ; -- nothing").is_empty());
    }
}
