//! Whether a read may be cached and for how long: a pure function of its analysis, the
//! catalog model, the config's rules and the query's own hints. When in doubt, no.

use crate::config::{CacheConfig, CacheMode};
use crate::router::analysis::{Analysis, StatementKind};
use std::time::Duration;

/// Why a read is not cached (the `reason` label of pgwarden_cache_misses_total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCache {
    /// `SET pgwarden.cache = off` in this session.
    SessionOff,
    /// `/* pgwarden:nocache */`.
    Hint,
    /// A `nocache` rule matched.
    Rule,
    /// `mode: rules` and no rule matched.
    NoRule,
    /// Not one SELECT (or it could not be parsed).
    NotASelect,
    /// It writes or locks.
    Write,
    /// It calls a volatile function (now(), random(), ...).
    Volatile,
    /// It calls a function of the database's own, or one that answers per node or
    /// session (pg_*, inet_*, version()...).
    Function,
    /// It reads a relation the catalog model does not have (a system catalog, a table
    /// created since), or there is no current model.
    UnknownTable,
    /// It reads a view: its body may call what the proxy cannot see.
    View,
    /// The session holds its server (session mode, pinned) or is in a transaction.
    Session,
}

impl NoCache {
    pub const ALL: [NoCache; 11] = [
        NoCache::SessionOff,
        NoCache::Hint,
        NoCache::Rule,
        NoCache::NoRule,
        NoCache::NotASelect,
        NoCache::Write,
        NoCache::Volatile,
        NoCache::Function,
        NoCache::UnknownTable,
        NoCache::View,
        NoCache::Session,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NoCache::SessionOff => "session_off",
            NoCache::Hint => "hint",
            NoCache::Rule => "rule",
            NoCache::NoRule => "no_rule",
            NoCache::NotASelect => "not_a_select",
            NoCache::Write => "write",
            NoCache::Volatile => "volatile",
            NoCache::Function => "function",
            NoCache::UnknownTable => "unknown_table",
            NoCache::View => "view",
            NoCache::Session => "session",
        }
    }
}

/// What the catalog model tells the policy.
pub trait Catalog {
    /// pg_class.relkind of every relation of that (lower-cased) name; none if unknown.
    fn kinds(&self, table: &str) -> Vec<char>;
    fn is_builtin(&self, function: &str) -> bool;
}

impl Catalog for crate::consistency::reach::Reach {
    fn kinds(&self, table: &str) -> Vec<char> {
        self.kinds_of(table).collect()
    }

    fn is_builtin(&self, function: &str) -> bool {
        crate::consistency::reach::Reach::is_builtin(self, function)
    }
}

/// Built-in functions whose answer depends on the node, the session or the moment,
/// beyond the volatile list of the analysis: by prefix, and by name.
const NODE_PREFIXES: &[&str] = &["pg_", "inet_", "txid_", "current_"];
const NODE_FUNCTIONS: &[&str] = &["version", "session_user", "user", "now", "timeofday"];

/// A query's own say, from its comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    NoCache,
    /// `/* pgwarden:cache */`, optionally `ttl=30s`.
    Cache(Option<Duration>),
}

/// The first `pgwarden:cache` / `pgwarden:nocache` found in a block comment.
pub fn hint(sql: &str) -> Option<Hint> {
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let body = &rest[start + 2..];
        let end = body.find("*/").unwrap_or(body.len());
        let words = &body[..end];
        for w in words.split_whitespace() {
            if w.eq_ignore_ascii_case("pgwarden:nocache") {
                return Some(Hint::NoCache);
            }
            if w.eq_ignore_ascii_case("pgwarden:cache") {
                let ttl = words
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ttl="))
                    .and_then(parse_duration);
                return Some(Hint::Cache(ttl));
            }
        }
        rest = &body[end..];
    }
    None
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A read as the policy sees it.
pub struct Read<'a> {
    pub analysis: &'a Analysis,
    pub sql: &'a str,
}

/// The rules of the config, compiled once.
pub struct Rules {
    mode: CacheMode,
    default_ttl: Duration,
    rules: Vec<Rule>,
    /// Some rule has a pattern: only then is a read's fingerprint worth computing.
    patterns: bool,
}

struct Rule {
    table: Option<String>,
    fingerprint: Option<u64>,
    ttl: Option<Duration>,
    nocache: bool,
}

impl Rules {
    pub fn new(c: &CacheConfig) -> Rules {
        Rules {
            mode: c.mode,
            default_ttl: Duration::from_millis(c.default_ttl_ms),
            rules: c
                .rules
                .iter()
                .map(|r| Rule {
                    table: r.table.as_ref().map(|t| t.to_lowercase()),
                    fingerprint: r.fingerprint(),
                    ttl: r.ttl_ms.map(Duration::from_millis),
                    nocache: r.nocache,
                })
                .collect(),
            patterns: c.rules.iter().any(|r| r.pattern.is_some()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != CacheMode::Off
    }

    /// How long `read` may be cached, or why not. `catalog` is the database's current
    /// model, None when there is none yet.
    pub fn decide(
        &self,
        read: &Read<'_>,
        catalog: Option<&dyn Catalog>,
    ) -> Result<Duration, NoCache> {
        let hint = hint(read.sql);
        if hint == Some(Hint::NoCache) {
            return Err(NoCache::Hint);
        }
        let a = read.analysis;
        let [s] = a.statements.as_slice() else {
            return Err(NoCache::NotASelect);
        };
        if a.parse_failed || s.kind != StatementKind::Select || s.set.is_some() {
            return Err(NoCache::NotASelect);
        }
        if s.is_write() || s.pins.is_some() {
            return Err(NoCache::Write);
        }
        if s.volatile_function {
            return Err(NoCache::Volatile);
        }
        let catalog = catalog.ok_or(NoCache::UnknownTable)?;
        let node_dependent =
            |f: &str| NODE_PREFIXES.iter().any(|p| f.starts_with(p)) || NODE_FUNCTIONS.contains(&f);
        if s.calls
            .iter()
            .any(|f| node_dependent(f) || !catalog.is_builtin(f))
        {
            return Err(NoCache::Function);
        }
        let tables: Vec<String> = s.reads.iter().map(|t| t.name.to_lowercase()).collect();
        // Rules first: a rule naming a view allows it.
        let print = self
            .patterns
            .then(|| crate::router::fingerprint::fingerprint(read.sql));
        let matching = self.rules.iter().filter(|r| {
            r.table.as_ref().is_some_and(|t| tables.contains(t))
                || (r.fingerprint.is_some() && r.fingerprint == print)
        });
        let mut ttl: Option<Duration> = None;
        let mut matched = false;
        for r in matching {
            if r.nocache {
                return Err(NoCache::Rule);
            }
            matched = true;
            let t = r.ttl.unwrap_or(self.default_ttl);
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
        }
        for t in &tables {
            let kinds = catalog.kinds(t);
            if kinds.is_empty() {
                return Err(NoCache::UnknownTable);
            }
            // Tables, partitioned tables, materialized views: a write moves their
            // versions. Views (and foreign tables) only when a rule says so.
            if !matched && kinds.iter().any(|k| !matches!(k, 'r' | 'p' | 'm')) {
                return Err(NoCache::View);
            }
        }
        let hinted = match hint {
            Some(Hint::Cache(t)) => Some(t.unwrap_or(self.default_ttl)),
            _ => None,
        };
        if self.mode == CacheMode::Rules && !matched && hinted.is_none() {
            return Err(NoCache::NoRule);
        }
        Ok(hinted.or(ttl).unwrap_or(self.default_ttl))
    }
}

#[cfg(test)]
mod tests;
