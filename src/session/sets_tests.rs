//! Table tests of the session rules: what each statement does to the session, and what
//! the session keeps once the server committed (or did not).

use super::super::Session;
use crate::config::ConsistencyMode;
use crate::router::analysis::{analyze, PinReason, SetStmt};
use crate::router::plan::RouteOverride;

fn session(startup: &[(&str, &str)]) -> Session {
    Session::for_tests(startup)
}

/// Runs each statement through the rules, settling its SETs as `committed`; returns
/// the session and what the server connection carries after.
fn run(s: &mut Session, sql: &[&str], committed: bool) -> Vec<(String, String)> {
    let mut applied = Vec::new();
    for q in sql {
        let mut sets: Vec<SetStmt> = Vec::new();
        s.note_effects(&analyze(q, &[]), &mut sets, ConsistencyMode::Session);
        s.settle_sets(sets, committed, &mut applied);
    }
    applied
}

fn params(s: &Session) -> Vec<(&str, &str)> {
    s.params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn session_sets_are_kept_once_committed_and_replayed_as_sql() {
    // (statements, committed, params after)
    type Case = (
        &'static [&'static str],
        bool,
        &'static [(&'static str, &'static str)],
    );
    let cases: &[Case] = &[
        (
            &["set search_path = a"],
            true,
            &[("tz", "'utc'"), ("search_path", "a")],
        ),
        (
            &["SET Search_Path TO a", "set search_path = b"],
            true,
            &[("tz", "'utc'"), ("search_path", "b")],
        ),
        // Not committed (the block rolled back): nothing is kept.
        (&["set search_path = a"], false, &[("tz", "'utc'")]),
        // SET LOCAL ends with its transaction.
        (&["set local search_path = a"], true, &[("tz", "'utc'")]),
        // RESET goes back to the startup value, or to none.
        (&["set tz = 'x'", "reset tz"], true, &[("tz", "'utc'")]),
        (
            &["set search_path = a", "reset search_path"],
            true,
            &[("tz", "'utc'")],
        ),
        (
            &["set search_path = a", "reset all"],
            true,
            &[("tz", "'utc'")],
        ),
    ];
    for (i, (sql, committed, want)) in cases.iter().enumerate() {
        let mut s = session(&[("tz", "utc")]);
        run(&mut s, sql, *committed);
        assert_eq!(params(&s), *want, "case {i}: {sql:?}");
    }
}

#[test]
fn the_server_connection_carries_what_the_session_keeps() {
    let mut s = session(&[]);
    let applied = run(&mut s, &["set search_path = a"], true);
    assert_eq!(applied, s.params);
    // RESET ALL sends the server back to its own defaults: it carries nothing.
    let mut applied = vec![("search_path".to_string(), "a".to_string())];
    let mut sets = Vec::new();
    s.note_effects(
        &analyze("reset all", &[]),
        &mut sets,
        ConsistencyMode::Session,
    );
    s.settle_sets(sets, true, &mut applied);
    assert!(applied.is_empty());
}

#[test]
fn the_proxys_own_settings_act_at_once_and_never_reach_the_server() {
    // (statements, route override, consistency)
    type Case = (&'static [&'static str], RouteOverride, ConsistencyMode);
    let cases: &[Case] = &[
        (
            &["set pgwarden.route = primary"],
            RouteOverride::Primary,
            ConsistencyMode::Strict,
        ),
        (
            &["SET pgwarden.route TO 'replica'"],
            RouteOverride::Replica,
            ConsistencyMode::Strict,
        ),
        (
            &["set pgwarden.route = primary", "reset pgwarden.route"],
            RouteOverride::Auto,
            ConsistencyMode::Strict,
        ),
        (
            &["set pgwarden.consistency = eventual"],
            RouteOverride::Auto,
            ConsistencyMode::Eventual,
        ),
        (
            &["set pgwarden.consistency = 'session'"],
            RouteOverride::Auto,
            ConsistencyMode::Session,
        ),
        (
            &["set pgwarden.consistency = nonsense"],
            RouteOverride::Auto,
            ConsistencyMode::Strict,
        ),
        // RESET goes back to the configured default (Session here).
        (
            &[
                "set pgwarden.consistency = eventual",
                "reset pgwarden.consistency",
            ],
            RouteOverride::Auto,
            ConsistencyMode::Session,
        ),
    ];
    for (i, (sql, route, consistency)) in cases.iter().enumerate() {
        let mut s = session(&[]);
        // Not committed: the proxy's settings do not wait for the server.
        let applied = run(&mut s, sql, false);
        assert_eq!(
            (s.route_override, s.consistency),
            (*route, *consistency),
            "case {i}: {sql:?}"
        );
        assert!(
            s.params.is_empty() && applied.is_empty(),
            "case {i}: {sql:?}"
        );
    }
}

#[test]
fn state_that_cannot_move_pins_the_session_once() {
    let mut s = session(&[]);
    assert!(!s.holds_server());
    run(&mut s, &["select 1"], true);
    assert_eq!(s.pinned, None);
    run(&mut s, &["listen x"], true);
    assert_eq!(s.pinned, Some(PinReason::Listen));
    assert!(s.holds_server());
    // The first reason stays.
    run(&mut s, &["create temp table t (a int)"], true);
    assert_eq!(s.pinned, Some(PinReason::Listen));
}
