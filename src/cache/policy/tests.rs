use super::*;
use crate::config::{CacheConfig, CacheRule};
use crate::router::analysis::analyze;

/// What `decide` should return for one query.
type Want = Result<Duration, NoCache>;

/// A catalog of tables t and u, view v, builtins count/lower/pg_is_in_recovery/version.
struct Model;

impl Catalog for Model {
    fn kinds(&self, table: &str) -> Vec<char> {
        match table {
            "t" | "u" => vec!['r'],
            "v" => vec!['v'],
            "both" => vec!['r', 'v'],
            _ => vec![],
        }
    }

    fn is_builtin(&self, f: &str) -> bool {
        matches!(f, "count" | "lower" | "pg_is_in_recovery" | "version")
    }
}

fn config(mode: CacheMode, rules: Vec<CacheRule>) -> CacheConfig {
    CacheConfig {
        mode,
        default_ttl_ms: 60_000,
        rules,
        ..CacheConfig::default()
    }
}

fn decide_with(rules: &Rules, sql: &str) -> Result<Duration, NoCache> {
    let analysis = analyze(sql, &[]);
    let read = Read {
        analysis: &analysis,
        sql,
    };
    rules.decide(&read, Some(&Model))
}

fn secs(n: u64) -> Result<Duration, NoCache> {
    Ok(Duration::from_secs(n))
}

#[test]
fn all_safe_caches_plain_reads_and_nothing_doubtful() {
    let rules = Rules::new(&config(CacheMode::AllSafe, vec![]));
    let table: &[(&str, Result<Duration, NoCache>)] = &[
        ("select v from t where id = 1", secs(60)),
        (
            "SELECT count(*), lower(x) FROM t JOIN u ON t.id = u.id",
            secs(60),
        ),
        ("select 1", secs(60)),
        ("select * from t for update", Err(NoCache::Write)),
        ("select nextval('s')", Err(NoCache::Write)),
        ("update t set v = 1", Err(NoCache::NotASelect)),
        ("select 1; select 2", Err(NoCache::NotASelect)),
        ("begin", Err(NoCache::NotASelect)),
        ("not sql at all", Err(NoCache::NotASelect)),
        ("select now(), v from t", Err(NoCache::Volatile)),
        ("select random()", Err(NoCache::Volatile)),
        ("select pg_is_in_recovery()", Err(NoCache::Volatile)),
        (
            "select pg_backend_memory(), lower(v) from t",
            Err(NoCache::Function),
        ),
        ("select version()", Err(NoCache::Function)),
        ("select my_function(v) from t", Err(NoCache::Function)),
        ("select * from pg_class", Err(NoCache::UnknownTable)),
        ("select * from nowhere", Err(NoCache::UnknownTable)),
        ("select * from v", Err(NoCache::View)),
        ("select * from both", Err(NoCache::View)),
        ("select /* pgwarden:nocache */ v from t", Err(NoCache::Hint)),
        ("/* pgwarden:cache ttl=5s */ select v from t", secs(5)),
        ("select v from t /* pgwarden:cache */", secs(60)),
    ];
    for (sql, want) in table {
        assert_eq!(&decide_with(&rules, sql), want, "{sql}");
    }
}

#[test]
fn rules_by_table_and_pattern() {
    let rule = |table: Option<&str>, pattern: Option<&str>, ttl: Option<u64>, nocache| CacheRule {
        table: table.map(str::to_string),
        pattern: pattern.map(str::to_string),
        ttl_ms: ttl,
        nocache,
    };
    let rules = vec![
        rule(Some("T"), None, Some(30_000), false),
        rule(
            None,
            Some("select v from u where id = 7"),
            Some(10_000),
            false,
        ),
        rule(Some("v"), None, None, false),
        rule(
            None,
            Some("SELECT v FROM t WHERE id = 0 AND secret"),
            None,
            true,
        ),
    ];
    let all_safe = Rules::new(&config(CacheMode::AllSafe, rules.clone()));
    let only_rules = Rules::new(&config(CacheMode::Rules, rules));
    let table: &[(&str, Want, Want)] = &[
        ("select v from t where id = 1", secs(30), secs(30)),
        // The pattern matches whatever the literal; the shortest TTL of two rules wins.
        ("select v from u where id = 42", secs(10), secs(10)),
        (
            "select * from t join u on true where u.id = 1",
            secs(30),
            secs(30),
        ),
        // A rule naming a view allows it.
        ("select * from v", secs(60), secs(60)),
        ("select x from u", secs(60), Err(NoCache::NoRule)),
        (
            "/* pgwarden:cache ttl=2s */ select x from u",
            secs(2),
            secs(2),
        ),
        (
            "select v from t where id = 5 and secret",
            Err(NoCache::Rule),
            Err(NoCache::Rule),
        ),
    ];
    for (sql, safe, ruled) in table {
        assert_eq!(&decide_with(&all_safe, sql), safe, "all-safe: {sql}");
        assert_eq!(&decide_with(&only_rules, sql), ruled, "rules: {sql}");
    }
}

#[test]
fn without_a_catalog_model_nothing_is_cached() {
    let rules = Rules::new(&config(CacheMode::AllSafe, vec![]));
    let sql = "select v from t";
    let analysis = analyze(sql, &[]);
    let read = Read {
        analysis: &analysis,
        sql,
    };
    assert_eq!(rules.decide(&read, None), Err(NoCache::UnknownTable));
}

#[test]
fn hints_and_durations() {
    assert_eq!(hint("select 1"), None);
    assert_eq!(hint("select /* just a comment */ 1"), None);
    assert_eq!(hint("/* PGWARDEN:NOCACHE */ select 1"), Some(Hint::NoCache));
    assert_eq!(
        hint("/* a */ select /* pgwarden:cache ttl=500ms */ 1"),
        Some(Hint::Cache(Some(Duration::from_millis(500))))
    );
    assert_eq!(
        hint("/* pgwarden:cache ttl=soon */ select 1"),
        Some(Hint::Cache(None))
    );
    assert_eq!(
        hint("/* unterminated pgwarden:nocache"),
        Some(Hint::NoCache)
    );
    for (s, ms) in [
        ("30s", Some(30_000)),
        ("2m", Some(120_000)),
        ("1h", Some(3_600_000)),
        ("7", Some(7_000)),
    ] {
        assert_eq!(parse_duration(s), ms.map(Duration::from_millis), "{s}");
    }
    for s in ["", "0s", "s", "-1s", "3 days", "99999999999999999999s"] {
        assert_eq!(parse_duration(s), None, "{s}");
    }
}

#[test]
fn labels_are_distinct() {
    let labels: std::collections::HashSet<_> = NoCache::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), NoCache::ALL.len());
}

#[test]
fn reasons_are_in_declaration_order() {
    for (i, r) in NoCache::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
}
