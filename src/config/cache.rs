//! The `cache:` section of config.yaml: what the result cache keeps and for how long.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Nothing is cached.
    #[default]
    Off,
    /// Only reads a rule names (by table or pattern) are cached.
    Rules,
    /// Every read the proxy can tell is safe, unless a rule says nocache.
    AllSafe,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub mode: CacheMode,
    /// How long an entry lives when no rule or hint says otherwise.
    pub default_ttl_ms: u64,
    /// A result larger than this (the bytes sent to the client) is not cached.
    pub max_entry_bytes: usize,
    /// What the in-process cache (L1) holds at most, in bytes.
    pub l1_max_bytes: u64,
    /// First match by kind: any matching `nocache` rule wins, else the shortest `ttl_ms`
    /// of the matching rules.
    pub rules: Vec<CacheRule>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Off,
            default_ttl_ms: 60_000,
            max_entry_bytes: 1024 * 1024,
            l1_max_bytes: 64 * 1024 * 1024,
            rules: Vec::new(),
        }
    }
}

/// One rule. Exactly one of `table` and `pattern` says what it matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheRule {
    /// A read of this table (unqualified, case-insensitive; schemas are ignored).
    pub table: Option<String>,
    /// A query like this one: equal once literals, comments, whitespace and keyword case
    /// are set aside (the same fingerprint).
    pub pattern: Option<String>,
    /// How long matching results live; absent: `default_ttl_ms`.
    pub ttl_ms: Option<u64>,
    /// Never cache matching reads.
    pub nocache: bool,
}

impl CacheRule {
    /// The fingerprint a pattern rule matches (the parse cache's: stable within one
    /// build, so computed from the pattern at load, never written down).
    pub fn fingerprint(&self) -> Option<u64> {
        self.pattern
            .as_deref()
            .map(crate::router::fingerprint::fingerprint)
    }
}

/// The cache section's own checks; `path` errors as config validation reports them.
pub(crate) fn validate(c: &CacheConfig, captures_commits: bool) -> Result<(), (String, String)> {
    let bad = |p: String, m: &str| Err((p, m.to_string()));
    if c.mode != CacheMode::Off && !captures_commits {
        return bad(
            "cache.mode".into(),
            "the cache needs consistency.capture_commits: true (commits move its versions)",
        );
    }
    if c.default_ttl_ms == 0 {
        return bad("cache.default_ttl_ms".into(), "must be at least 1");
    }
    if c.l1_max_bytes < c.max_entry_bytes as u64 {
        return bad(
            "cache.l1_max_bytes".into(),
            "must be at least cache.max_entry_bytes",
        );
    }
    for (i, r) in c.rules.iter().enumerate() {
        let path = format!("cache.rules[{i}]");
        if r.table.is_some() == r.pattern.is_some() {
            return bad(path, "give exactly one of table and pattern");
        }
        if r.nocache && r.ttl_ms.is_some() {
            return bad(path, "a rule has either nocache or ttl_ms, not both");
        }
        if r.ttl_ms == Some(0) {
            return bad(format!("{path}.ttl_ms"), "must be at least 1");
        }
    }
    Ok(())
}
