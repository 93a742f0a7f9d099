//! The routing decision: a pure function from what a request does, the session's state,
//! the topology and the config to a Plan. No I/O; every rule is a unit test below.

use super::analysis::{Analysis, PinReason, StatementKind, TxnAccess};
use super::fingerprint::Hint;
use crate::config::RoutingConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Primary,
    Replica,
}

/// Why a request went where it did; also the `reason` label of pgwarden_queries_total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Read,
    ReadOnlyTransaction,
    Write,
    Transaction,
    HintPrimary,
    HintReplica,
    SessionOverride,
    Unparsable,
    Pinned,
    SplitDisabled,
    NoReplica,
    FunctionCall,
    Utility,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Write => "write",
            Reason::Transaction => "transaction",
            Reason::HintPrimary => "hint",
            Reason::HintReplica => "hint",
            Reason::SessionOverride => "session_override",
            Reason::Unparsable => "unparsable",
            Reason::Pinned => "pinned",
            Reason::SplitDisabled => "split_disabled",
            Reason::NoReplica => "no_replica",
            Reason::FunctionCall => "function_call",
            Reason::Utility => "utility",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub route: Route,
    pub reason: Reason,
    /// The request makes session state that must stay on one server connection.
    pub pin: Option<PinReason>,
}

impl Plan {
    fn primary(reason: Reason) -> Plan {
        Plan {
            route: Route::Primary,
            reason,
            pin: None,
        }
    }

    fn replica(reason: Reason) -> Plan {
        Plan {
            route: Route::Replica,
            reason,
            pin: None,
        }
    }
}

/// `SET pgwarden.route = ...` for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteOverride {
    #[default]
    Auto,
    Primary,
    Replica,
}

/// What the router needs to know about the session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionView {
    pub route_override: RouteOverride,
    /// Session mode, or a client pinned to its connection: nothing to route.
    pub held: bool,
}

/// What one request (a simple Query, or an extended batch up to Sync) contains.
pub enum RequestPart<'a> {
    Sql(&'a Analysis, Option<Hint>),
    FunctionCall,
}

/// Kinds that read only and may run on a replica outside a transaction.
fn replica_safe(kind: StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Select
            | StatementKind::Show
            | StatementKind::Explain
            | StatementKind::CopyTo
            | StatementKind::Fetch
            | StatementKind::DeclareCursor
            | StatementKind::ClosePortal
    )
}

/// Statements that only frame a transaction; they go wherever its body goes.
fn transaction_control(kind: StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Begin
            | StatementKind::Commit
            | StatementKind::Rollback
            | StatementKind::Savepoint
            | StatementKind::ReleaseSavepoint
            | StatementKind::RollbackToSavepoint
    )
}

fn plan_one(a: &Analysis, hint: Option<Hint>, session: &SessionView) -> Plan {
    if let Some(pin) = a.pins() {
        return Plan {
            route: Route::Primary,
            reason: Reason::Pinned,
            pin: Some(pin),
        };
    }
    match hint {
        Some(Hint::Primary) => return Plan::primary(Reason::HintPrimary),
        Some(Hint::Replica) => return Plan::replica(Reason::HintReplica),
        None => {}
    }
    match session.route_override {
        RouteOverride::Primary => return Plan::primary(Reason::SessionOverride),
        RouteOverride::Replica => return Plan::replica(Reason::SessionOverride),
        RouteOverride::Auto => {}
    }
    if a.parse_failed {
        return Plan::primary(Reason::Unparsable);
    }
    if a.statements.is_empty() {
        return Plan::primary(Reason::Utility);
    }
    let begins_read_only = a
        .statements
        .iter()
        .any(|s| s.kind == StatementKind::Begin && s.access == TxnAccess::ReadOnly);
    if a.statements
        .iter()
        .any(|s| s.kind == StatementKind::Begin && s.access != TxnAccess::ReadOnly)
    {
        return Plan::primary(Reason::Transaction);
    }
    if a.is_write() {
        return Plan::primary(Reason::Write);
    }
    let reads = a.statements.iter().any(|s| replica_safe(s.kind));
    let all_fit = a
        .statements
        .iter()
        .all(|s| replica_safe(s.kind) || transaction_control(s.kind));
    if all_fit && begins_read_only {
        Plan::replica(Reason::ReadOnlyTransaction)
    } else if all_fit && reads {
        Plan::replica(Reason::Read)
    } else {
        // SET, transaction control and other utilities: harmless anywhere, and the
        // primary is always there.
        Plan::primary(Reason::Utility)
    }
}

/// Routes one request. `replica_available` comes from the topology snapshot.
pub fn plan(
    parts: &[RequestPart<'_>],
    session: &SessionView,
    replica_available: bool,
    cfg: &RoutingConfig,
) -> Plan {
    let mut result: Option<Plan> = None;
    for part in parts {
        let p = match part {
            RequestPart::Sql(a, hint) => plan_one(a, *hint, session),
            RequestPart::FunctionCall => Plan::primary(Reason::FunctionCall),
        };
        result = Some(match result {
            // The primary wins: one write in a batch sends it all there.
            Some(prev) if prev.route == Route::Primary => Plan {
                pin: prev.pin.or(p.pin),
                ..prev
            },
            Some(prev) if p.route == Route::Replica => prev,
            _ => p,
        });
    }
    let p = result.unwrap_or(Plan::primary(Reason::Utility));
    if p.route == Route::Replica {
        if session.held {
            return Plan::primary(Reason::Pinned);
        }
        if !cfg.read_write_split && p.reason != Reason::HintReplica {
            return Plan::primary(Reason::SplitDisabled);
        }
        if !replica_available {
            return Plan::primary(Reason::NoReplica);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::analysis::analyze;
    use crate::router::fingerprint::leading_hint;

    fn route_of(sql: &str) -> Plan {
        route_with(sql, SessionView::default(), true)
    }

    fn route_with(sql: &str, s: SessionView, replicas: bool) -> Plan {
        let a = analyze(sql, &["audit_write".to_string()]);
        plan(
            &[RequestPart::Sql(&a, leading_hint(sql))],
            &s,
            replicas,
            &RoutingConfig::default(),
        )
    }

    #[test]
    fn reads_go_to_replicas_and_writes_to_the_primary() {
        let cases = [
            ("select * from t", Route::Replica, Reason::Read),
            ("select 1; select 2", Route::Replica, Reason::Read),
            ("show search_path", Route::Replica, Reason::Read),
            ("insert into t values (1)", Route::Primary, Reason::Write),
            ("update t set a = 1", Route::Primary, Reason::Write),
            ("delete from t", Route::Primary, Reason::Write),
            ("create table x (a int)", Route::Primary, Reason::Write),
            ("select * from t for update", Route::Primary, Reason::Write),
            ("select nextval('s')", Route::Primary, Reason::Write),
            ("select audit_write(1)", Route::Primary, Reason::Write),
            (
                "select 1; insert into t values (1)",
                Route::Primary,
                Reason::Write,
            ),
            ("begin", Route::Primary, Reason::Transaction),
            (
                "begin read only",
                Route::Replica,
                Reason::ReadOnlyTransaction,
            ),
            (
                "start transaction isolation level repeatable read, read only",
                Route::Replica,
                Reason::ReadOnlyTransaction,
            ),
            ("begin read write", Route::Primary, Reason::Transaction),
            (
                "begin read only; select 1; commit",
                Route::Replica,
                Reason::ReadOnlyTransaction,
            ),
            (
                "begin; select 1; commit",
                Route::Primary,
                Reason::Transaction,
            ),
            (
                "begin read only; insert into t values (1); commit",
                Route::Primary,
                Reason::Write,
            ),
            ("commit", Route::Primary, Reason::Utility),
            ("set search_path = a", Route::Primary, Reason::Utility),
            ("this is not sql", Route::Primary, Reason::Unparsable),
            ("", Route::Primary, Reason::Utility),
        ];
        for (sql, route, reason) in cases {
            let p = route_of(sql);
            assert_eq!((p.route, p.reason), (route, reason), "{sql}");
        }
    }

    #[test]
    fn hints_and_session_override_win() {
        assert_eq!(
            route_of("/* pgwarden:primary */ select 1").reason,
            Reason::HintPrimary
        );
        let p = route_of("/* pgwarden:replica */ select 1");
        assert_eq!((p.route, p.reason), (Route::Replica, Reason::HintReplica));
        let s = SessionView {
            route_override: RouteOverride::Primary,
            ..Default::default()
        };
        assert_eq!(route_with("select 1", s, true).route, Route::Primary);
        let s = SessionView {
            route_override: RouteOverride::Replica,
            ..Default::default()
        };
        assert_eq!(route_with("select 1", s, true).route, Route::Replica);
    }

    #[test]
    fn pins_go_to_the_primary_with_their_reason() {
        for (sql, pin) in [
            ("listen ch", PinReason::Listen),
            ("select pg_advisory_lock(1)", PinReason::AdvisoryLock),
            ("create temp table tt (a int)", PinReason::TempTable),
            ("prepare p as select 1", PinReason::SqlPrepare),
            (
                "select set_config('search_path', 'x', false)",
                PinReason::SetConfig,
            ),
        ] {
            let p = route_of(sql);
            assert_eq!((p.route, p.pin), (Route::Primary, Some(pin)), "{sql}");
        }
    }

    #[test]
    fn no_replica_split_off_or_held_session_means_primary() {
        assert_eq!(
            route_with("select 1", SessionView::default(), false).reason,
            Reason::NoReplica
        );
        let held = SessionView {
            held: true,
            ..Default::default()
        };
        assert_eq!(route_with("select 1", held, true).route, Route::Primary);
        let a = analyze("select 1", &[]);
        let cfg = RoutingConfig {
            read_write_split: false,
            ..Default::default()
        };
        let p = plan(
            &[RequestPart::Sql(&a, None)],
            &SessionView::default(),
            true,
            &cfg,
        );
        assert_eq!(p.reason, Reason::SplitDisabled);
    }

    #[test]
    fn a_batch_with_any_write_or_function_call_goes_to_the_primary() {
        let r = analyze("select 1", &[]);
        let w = analyze("insert into t values (1)", &[]);
        let cfg = RoutingConfig::default();
        let s = SessionView::default();
        assert_eq!(
            plan(
                &[RequestPart::Sql(&r, None), RequestPart::Sql(&w, None)],
                &s,
                true,
                &cfg
            )
            .route,
            Route::Primary
        );
        assert_eq!(
            plan(
                &[RequestPart::Sql(&w, None), RequestPart::Sql(&r, None)],
                &s,
                true,
                &cfg
            )
            .route,
            Route::Primary
        );
        assert_eq!(
            plan(
                &[RequestPart::Sql(&r, None), RequestPart::FunctionCall],
                &s,
                true,
                &cfg
            )
            .route,
            Route::Primary
        );
        assert_eq!(
            plan(
                &[RequestPart::Sql(&r, None), RequestPart::Sql(&r, None)],
                &s,
                true,
                &cfg
            )
            .route,
            Route::Replica
        );
    }
}
