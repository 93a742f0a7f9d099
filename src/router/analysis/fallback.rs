//! Slow path for SQL that sqlparser rejects: retry each statement on its own, then with small
//! rewrites of PostgreSQL syntax sqlparser lacks, then classify plainly recognisable utility
//! statements by their leading keywords. Anything else makes the whole string `parse_failed`.

use super::classify::classify;
use super::lexer::{split_statements, Lexer, Token, TokenKind};
use super::{
    parse, Analysis, PinReason, SetStmt, StatementInfo, StatementKind, TableRef, TxnAccess,
};

pub(super) fn analyze_each(sql: &str, extra: &[String]) -> Analysis {
    let mut statements = Vec::new();
    for text in split_statements(sql) {
        let parsed = parse(text).or_else(|| rewrite(text).and_then(|fixed| parse(&fixed)));
        match parsed {
            Some(stmts) => statements.extend(stmts.iter().map(|s| classify(s, extra))),
            None => match keyword_fallback(text) {
                Some(info) => statements.push(info),
                None => return Analysis::failed(),
            },
        }
    }
    Analysis {
        statements,
        parse_failed: false,
    }
}

/// The tokens of one statement, with keyword tests.
struct Words<'a> {
    text: &'a str,
    toks: Vec<Token>,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Words {
            text,
            toks: Lexer::new(text).collect(),
        }
    }

    fn slice(&self, i: usize) -> Option<&'a str> {
        self.toks.get(i).map(|t| &self.text[t.start..t.end])
    }

    /// Token `i` is the unquoted word `kw` (any case).
    fn is(&self, i: usize, kw: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == TokenKind::Word)
            && self.slice(i).is_some_and(|s| s.eq_ignore_ascii_case(kw))
    }

    fn is_op(&self, i: usize, op: &str) -> bool {
        self.toks
            .get(i)
            .is_some_and(|t| t.kind == TokenKind::Operator)
            && self.slice(i) == Some(op)
    }

    /// The words `kws` appear in a row somewhere.
    fn has_sequence(&self, kws: &[&str]) -> bool {
        (0..self.toks.len()).any(|i| kws.iter().enumerate().all(|(k, kw)| self.is(i + k, kw)))
    }

    /// Source text from token `i` to the end, or "" past the end.
    fn rest(&self, i: usize) -> &'a str {
        match (self.toks.get(i), self.toks.last()) {
            (Some(first), Some(last)) => &self.text[first.start..last.end],
            _ => "",
        }
    }

    /// A possibly dotted name starting at token `i`: its normalised parts and the index after.
    fn name(&self, mut i: usize) -> Option<(Vec<String>, usize)> {
        let mut parts = Vec::new();
        loop {
            let tok = self.toks.get(i)?;
            let s = self.slice(i)?;
            parts.push(match tok.kind {
                TokenKind::Word => s.to_ascii_lowercase(),
                TokenKind::QuotedIdent => {
                    let inner = s.strip_prefix('"').unwrap_or(s);
                    inner
                        .strip_suffix('"')
                        .unwrap_or(inner)
                        .replace("\"\"", "\"")
                }
                _ => return None,
            });
            i += 1;
            if self.slice(i) != Some(".") {
                return Some((parts, i));
            }
            i += 1;
        }
    }
}

/// Rewrites PostgreSQL syntax that sqlparser 0.64 rejects into an equivalent it accepts, for
/// routing purposes: `FOR NO KEY UPDATE` -> `FOR UPDATE`, `FOR KEY SHARE` -> `FOR SHARE` (still
/// row locks), and a leading `TABLE t` -> `SELECT * FROM t`.
fn rewrite(text: &str) -> Option<String> {
    let w = Words::new(text);
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    if w.is(0, "table") {
        edits.push((w.toks[0].start, w.toks[0].end, "SELECT * FROM"));
    }
    for i in 0..w.toks.len() {
        if w.is(i, "for") && w.is(i + 1, "no") && w.is(i + 2, "key") && w.is(i + 3, "update") {
            edits.push((w.toks[i + 1].start, w.toks[i + 3].start, ""));
        } else if w.is(i, "for") && w.is(i + 1, "key") && w.is(i + 2, "share") {
            edits.push((w.toks[i + 1].start, w.toks[i + 2].start, ""));
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut pos = 0;
    for (start, end, with) in edits {
        out.push_str(&text[pos..start]);
        out.push_str(with);
        pos = end;
    }
    out.push_str(&text[pos..]);
    Some(out)
}

/// Utility statements recognisable by their first keywords.
fn keyword_fallback(text: &str) -> Option<StatementInfo> {
    use StatementKind as K;
    let w = Words::new(text);
    if w.toks.first()?.kind != TokenKind::Word {
        return None;
    }
    let first = w.slice(0)?.to_ascii_lowercase();
    let info = match first.as_str() {
        "do" => StatementInfo::new(K::Do),
        "checkpoint" | "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" => {
            StatementInfo::new(K::Maintenance)
        }
        "discard" => StatementInfo::new(K::Discard),
        "listen" => StatementInfo {
            pins: Some(PinReason::Listen),
            ..StatementInfo::new(K::Listen)
        },
        "unlisten" => StatementInfo::new(K::Unlisten),
        "notify" => StatementInfo::new(K::Notify),
        "reset" => reset(&w)?,
        "set" => set(&w)?,
        "begin" | "start" => {
            if first == "start" && !w.is(1, "transaction") {
                return None;
            }
            StatementInfo {
                access: access_mode(&w),
                ..StatementInfo::new(K::Begin)
            }
        }
        // Two-phase commit: not the session's transaction control; unknown effect.
        "commit" | "end" | "rollback" | "abort" | "prepare" if w.is(1, "prepared") => {
            StatementInfo::new(K::Other)
        }
        "prepare" if w.is(1, "transaction") => StatementInfo::new(K::Other),
        "commit" | "end" => StatementInfo::new(K::Commit),
        "rollback" | "abort" if w.is(1, "to") || w.is(2, "to") => {
            StatementInfo::new(K::RollbackToSavepoint)
        }
        "rollback" | "abort" => StatementInfo::new(K::Rollback),
        "prepare" => StatementInfo {
            pins: Some(PinReason::SqlPrepare),
            ..StatementInfo::new(K::Prepare)
        },
        "savepoint" => StatementInfo::new(K::Savepoint),
        "release" => StatementInfo::new(K::ReleaseSavepoint),
        "execute" => StatementInfo::new(K::Execute),
        "deallocate" => StatementInfo::new(K::Deallocate),
        "fetch" | "move" => StatementInfo::new(K::Fetch),
        "close" => StatementInfo::new(K::ClosePortal),
        "show" => StatementInfo::new(K::Show),
        "lock" => StatementInfo::new(K::Lock),
        "call" => StatementInfo::new(K::Call),
        "load" => StatementInfo::new(K::Other),
        "create" => create_temp(&w)?,
        _ => return None,
    };
    Some(info)
}

fn access_mode(w: &Words<'_>) -> TxnAccess {
    (0..w.toks.len())
        .rev()
        .find_map(|i| {
            if !w.is(i, "read") {
                None
            } else if w.is(i + 1, "only") {
                Some(TxnAccess::ReadOnly)
            } else if w.is(i + 1, "write") {
                Some(TxnAccess::ReadWrite)
            } else {
                None
            }
        })
        .unwrap_or_default()
}

fn reset(w: &Words<'_>) -> Option<StatementInfo> {
    let set = if w.is(1, "all") && w.toks.len() == 2 {
        SetStmt::ResetAll
    } else if w.is(1, "time") && w.is(2, "zone") {
        SetStmt::Reset {
            name: "timezone".into(),
        }
    } else if w.is(1, "session") && w.is(2, "authorization") {
        SetStmt::Reset {
            name: "session_authorization".into(),
        }
    } else {
        let (parts, end) = w.name(1)?;
        if end != w.toks.len() {
            return None;
        }
        SetStmt::Reset {
            name: parts.join("."),
        }
    };
    Some(StatementInfo {
        set: Some(set),
        ..StatementInfo::new(StatementKind::Reset)
    })
}

/// `SET [SESSION | LOCAL] name {= | TO} value` and the special forms PostgreSQL spells with
/// keywords. The value is kept as written.
fn set(w: &Words<'_>) -> Option<StatementInfo> {
    let mut info = StatementInfo::new(StatementKind::Set);
    let mut i = 1;
    let mut local = false;
    if w.is(i, "local") {
        local = true;
        i += 1;
    } else if w.is(i, "session") && !w.is(i + 1, "authorization") {
        i += 1;
    }
    let (name, value) = if w.is(i, "session") && w.is(i + 1, "authorization") {
        ("session_authorization".to_string(), w.rest(i + 2))
    } else if w.is(i, "role") && !w.is_op(i + 1, "=") && !w.is(i + 1, "to") {
        ("role".to_string(), w.rest(i + 1))
    } else if w.is(i, "time") && w.is(i + 1, "zone") {
        let v = w.rest(i + 2);
        let v = if v.eq_ignore_ascii_case("local") {
            "DEFAULT"
        } else {
            v
        };
        ("timezone".to_string(), v)
    } else if w.is(i, "schema") {
        ("search_path".to_string(), w.rest(i + 1))
    } else if w.is(i, "names") {
        ("client_encoding".to_string(), w.rest(i + 1))
    } else if w.is(i, "constraints") || w.is(i, "transaction") || w.is(i, "characteristics") {
        // Transaction-scoped: nothing for the session to carry.
        if w.is(i, "transaction") {
            info.access = access_mode(w);
        }
        return Some(info);
    } else {
        let (parts, end) = w.name(i)?;
        if !w.is_op(end, "=") && !w.is(end, "to") {
            return None;
        }
        (parts.join("."), w.rest(end + 1))
    };
    if value.is_empty() {
        return None;
    }
    if !local && (name == "role" || name == "session_authorization") {
        info.pins = Some(PinReason::SetRole);
    }
    info.set = Some(SetStmt::Set {
        name,
        value: value.to_string(),
        local,
    });
    Some(info)
}

/// `CREATE [GLOBAL | LOCAL] {TEMP | TEMPORARY} [UNLOGGED] [RECURSIVE] {TABLE | VIEW | SEQUENCE}
/// [IF NOT EXISTS] name ...` with syntax sqlparser lacks: the pin must not be lost.
fn create_temp(w: &Words<'_>) -> Option<StatementInfo> {
    let mut i = 1;
    if w.is(i, "or") && w.is(i + 1, "replace") {
        i += 2;
    }
    if w.is(i, "global") || w.is(i, "local") {
        i += 1;
    }
    if !(w.is(i, "temp") || w.is(i, "temporary")) {
        return None;
    }
    i += 1;
    while w.is(i, "unlogged") || w.is(i, "recursive") {
        i += 1;
    }
    if !(w.is(i, "table") || w.is(i, "view") || w.is(i, "sequence")) {
        return None;
    }
    i += 1;
    if w.is(i, "if") && w.is(i + 1, "not") && w.is(i + 2, "exists") {
        i += 3;
    }
    let mut info = StatementInfo::new(StatementKind::Ddl);
    if let Some((mut parts, _)) = w.name(i) {
        let name = parts.pop().unwrap_or_default();
        info.writes.push(TableRef {
            schema: parts.pop(),
            name,
        });
    }
    if !w.has_sequence(&["on", "commit", "drop"]) {
        info.pins = Some(PinReason::TempTable);
    }
    Some(info)
}
