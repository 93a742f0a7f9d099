//! Turns one parsed statement into a StatementInfo: its kind, and the statement-level facts
//! (transaction mode, SET/RESET, pins, EXPLAIN/PREPARE wrapping) on top of `collect`'s walk.

use sqlparser::ast::{
    ContextModifier, DeclareType, Expr, ObjectName, OnCommit, Reset, Set, SetExpr,
    SetSessionAuthorizationParamKind, Statement, TransactionAccessMode, TransactionMode,
    UtilityOption, Value,
};

use super::collect::collect;
use super::{PinReason, SetStmt, StatementInfo, StatementKind, TxnAccess};

pub(super) fn classify(stmt: &Statement, extra: &[String]) -> StatementInfo {
    match stmt {
        // The wrapped statement decides the tables; the wrapper decides what runs.
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => explain(
            classify(statement, extra),
            *analyze || analyze_option(options),
        ),
        Statement::Prepare { statement, .. } => {
            // Describes the prepared statement, so a later EXECUTE can be judged by it.
            let inner = classify(statement, extra);
            StatementInfo {
                kind: StatementKind::Prepare,
                pins: Some(PinReason::SqlPrepare),
                access: TxnAccess::Unstated,
                set: None,
                ..inner
            }
        }
        _ => {
            let c = collect(stmt, extra);
            let mut info = StatementInfo::new(kind_of(stmt));
            if info.kind == StatementKind::Select && c.select_into {
                info.kind = StatementKind::Ddl;
            }
            info.reads = c.reads;
            info.writes = c.writes;
            info.locking = c.locking;
            info.writing_function = c.writing_function;
            info.volatile_function = c.volatile_function;
            info.calls = c.calls;
            statement_facts(stmt, &mut info);
            info.pins = info.pins.or(c.pin);
            info
        }
    }
}

/// EXPLAIN runs the statement only with ANALYZE; otherwise it reads the catalog, and the
/// statement's tables are kept as reads (the plan depends on them).
fn explain(inner: StatementInfo, analyze: bool) -> StatementInfo {
    if analyze {
        // Without a field for "runs something unknown", a wrapped EXECUTE/CALL/DO-like
        // statement is flagged as a writing function so the EXPLAIN is still a write.
        let unknown_effect = inner.kind.is_write() && !inner.is_write_by_content();
        return StatementInfo {
            kind: StatementKind::Explain,
            writing_function: inner.writing_function || unknown_effect,
            access: TxnAccess::Unstated,
            set: None,
            ..inner
        };
    }
    let mut reads = inner.reads;
    for t in inner.writes {
        if !reads.contains(&t) {
            reads.push(t);
        }
    }
    StatementInfo {
        reads,
        volatile_function: inner.volatile_function,
        ..StatementInfo::new(StatementKind::Explain)
    }
}

impl StatementInfo {
    fn is_write_by_content(&self) -> bool {
        self.locking || self.writing_function || !self.writes.is_empty()
    }
}

/// `EXPLAIN (ANALYZE [bool])`. Only an explicit FALSE/OFF disables it: a literal argument
/// (`ANALYZE 0`) is treated as true because literals are not part of the parse-cache key,
/// so the answer must not depend on them.
fn analyze_option(options: &Option<Vec<UtilityOption>>) -> bool {
    options.iter().flatten().any(|o| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && match &o.arg {
                None => true,
                Some(Expr::Value(v)) => !matches!(v.value, Value::Boolean(false)),
                Some(Expr::Identifier(i)) => !i.value.eq_ignore_ascii_case("off"),
                Some(_) => true,
            }
    })
}

fn kind_of(stmt: &Statement) -> StatementKind {
    use StatementKind as K;
    match stmt {
        // `WITH x AS (...) INSERT ...` is a Query whose body is the data-modifying statement.
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(_) => K::Insert,
            SetExpr::Update(_) => K::Update,
            SetExpr::Delete(_) => K::Delete,
            SetExpr::Merge(_) => K::Merge,
            _ => K::Select,
        },
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::Copy { to: true, .. } => K::CopyTo,
        Statement::Copy { to: false, .. } => K::CopyFrom,
        Statement::Truncate(_) => K::Truncate,
        Statement::Set(_) => K::Set,
        Statement::Reset(_) => K::Reset,
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCollation { .. } => K::Show,
        Statement::StartTransaction { .. } => K::Begin,
        Statement::Commit { .. } => K::Commit,
        Statement::Rollback {
            savepoint: Some(_), ..
        } => K::RollbackToSavepoint,
        Statement::Rollback {
            savepoint: None, ..
        } => K::Rollback,
        Statement::Savepoint { .. } => K::Savepoint,
        Statement::ReleaseSavepoint { .. } => K::ReleaseSavepoint,
        Statement::Prepare { .. } => K::Prepare,
        Statement::Execute { .. } => K::Execute,
        Statement::Deallocate { .. } => K::Deallocate,
        Statement::Discard { .. } => K::Discard,
        Statement::LISTEN { .. } => K::Listen,
        Statement::UNLISTEN { .. } => K::Unlisten,
        Statement::NOTIFY { .. } => K::Notify,
        Statement::Call(_) => K::Call,
        Statement::Lock(_) | Statement::LockTables { .. } => K::Lock,
        Statement::Explain { .. } => K::Explain,
        Statement::Vacuum(_) | Statement::Analyze(_) => K::Maintenance,
        Statement::Declare { stmts, .. }
            if stmts.iter().any(|d| {
                d.for_query.is_some() || matches!(d.declare_type, Some(DeclareType::Cursor))
            }) =>
        {
            K::DeclareCursor
        }
        Statement::Fetch { .. } => K::Fetch,
        Statement::Close { .. } => K::ClosePortal,
        s if is_ddl(s) => K::Ddl,
        _ => K::Other,
    }
}

fn is_ddl(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateView(_)
            | Statement::CreateTable(_)
            | Statement::CreateVirtualTable { .. }
            | Statement::CreateIndex(_)
            | Statement::CreateRole(_)
            | Statement::CreateServer(_)
            | Statement::CreateForeignTable(_)
            | Statement::CreateForeignDataWrapper(_)
            | Statement::CreateUserMapping(_)
            | Statement::CreatePolicy(_)
            | Statement::CreateRule(_)
            | Statement::CreateOperator(_)
            | Statement::CreateOperatorFamily(_)
            | Statement::CreateOperatorClass(_)
            | Statement::CreateTextSearch(_)
            | Statement::CreateAggregate(_)
            | Statement::AlterTable(_)
            | Statement::AlterSchema(_)
            | Statement::AlterIndex { .. }
            | Statement::AlterView(_)
            | Statement::AlterFunction(_)
            | Statement::AlterType(_)
            | Statement::AlterCollation(_)
            | Statement::AlterOperator(_)
            | Statement::AlterOperatorFamily(_)
            | Statement::AlterOperatorClass(_)
            | Statement::AlterTextSearch(_)
            | Statement::AlterRole { .. }
            | Statement::AlterPolicy(_)
            | Statement::AlterTrigger(_)
            | Statement::Drop { .. }
            | Statement::DropFunction(_)
            | Statement::DropDomain(_)
            | Statement::DropProcedure { .. }
            | Statement::DropPolicy(_)
            | Statement::DropRule(_)
            | Statement::CreateExtension(_)
            | Statement::CreateCollation(_)
            | Statement::DropExtension(_)
            | Statement::DropOperator(_)
            | Statement::DropOperatorFamily(_)
            | Statement::DropOperatorClass(_)
            | Statement::Comment { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateFunction(_)
            | Statement::CreateTrigger(_)
            | Statement::DropTrigger(_)
            | Statement::CreateProcedure { .. }
            | Statement::Grant(_)
            | Statement::GrantRole(_)
            | Statement::Revoke(_)
            | Statement::RevokeRole(_)
            | Statement::AlterDefaultPrivileges(_)
            | Statement::CreateSequence { .. }
            | Statement::CreateDomain(_)
            | Statement::CreateType { .. }
            | Statement::RenameTable(_)
            | Statement::CreateUser(_)
            | Statement::AlterUser(_)
            | Statement::RefreshMaterializedView(_)
    )
}

/// Facts that come from the statement itself rather than from its tables and expressions.
fn statement_facts(stmt: &Statement, info: &mut StatementInfo) {
    match stmt {
        Statement::StartTransaction { modes, .. } => info.access = access_mode(modes),
        Statement::Set(s) => set_facts(s, info),
        Statement::Reset(r) => {
            info.set = Some(match &r.reset {
                Reset::ALL => SetStmt::ResetAll,
                Reset::ConfigurationParameter(name) => SetStmt::Reset {
                    name: param_name(name),
                },
                Reset::SessionAuthorization => SetStmt::Reset {
                    name: "session_authorization".into(),
                },
            });
        }
        Statement::LISTEN { .. } => info.pins = Some(PinReason::Listen),
        // ON COMMIT DROP tables are gone by the end of the transaction: nothing to pin.
        Statement::CreateTable(c) if c.temporary && c.on_commit != Some(OnCommit::Drop) => {
            info.pins = Some(PinReason::TempTable)
        }
        Statement::CreateView(v) if v.temporary => info.pins = Some(PinReason::TempTable),
        Statement::CreateSequence {
            temporary: true, ..
        } => info.pins = Some(PinReason::TempTable),
        Statement::Declare { stmts, .. } if stmts.iter().any(|d| d.hold == Some(true)) => {
            info.pins = Some(PinReason::WithHoldCursor)
        }
        _ => {}
    }
}

fn access_mode(modes: &[TransactionMode]) -> TxnAccess {
    modes
        .iter()
        .rev()
        .find_map(|m| match m {
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => {
                Some(TxnAccess::ReadOnly)
            }
            TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                Some(TxnAccess::ReadWrite)
            }
            TransactionMode::IsolationLevel(_) => None,
        })
        .unwrap_or_default()
}

/// GUC names are case-insensitive in PostgreSQL, quoted or not.
fn param_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) => i.value.to_lowercase(),
            None => p.to_string().to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn set_facts(s: &Set, info: &mut StatementInfo) {
    let (name, value, local) = match s {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let value = values
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let local = matches!(scope, Some(ContextModifier::Local));
            (param_name(variable), value, local)
        }
        Set::SetTimeZone { local, value } => {
            // `SET TIME ZONE LOCAL` means the default; `SET timezone = local` would not.
            let value = match value {
                Expr::Identifier(i)
                    if i.quote_style.is_none()
                        && (i.value.eq_ignore_ascii_case("local")
                            || i.value.eq_ignore_ascii_case("default")) =>
                {
                    "DEFAULT".to_string()
                }
                v => v.to_string(),
            };
            ("timezone".to_string(), value, *local)
        }
        Set::SetRole {
            context_modifier,
            role_name,
        } => {
            let value = role_name
                .as_ref()
                .map_or_else(|| "NONE".to_string(), ToString::to_string);
            let local = matches!(context_modifier, Some(ContextModifier::Local));
            ("role".to_string(), value, local)
        }
        Set::SetSessionAuthorization(p) => {
            let value = match &p.kind {
                SetSessionAuthorizationParamKind::Default => "DEFAULT".to_string(),
                SetSessionAuthorizationParamKind::User(u) => u.to_string(),
            };
            let local = matches!(p.scope, ContextModifier::Local);
            ("session_authorization".to_string(), value, local)
        }
        Set::SetNames { charset_name, .. } => (
            "client_encoding".to_string(),
            charset_name.to_string(),
            false,
        ),
        Set::SetNamesDefault {} => ("client_encoding".to_string(), "DEFAULT".to_string(), false),
        Set::SetTransaction { modes, session, .. } => {
            // Transaction characteristics are not a parameter the session must carry.
            if !session {
                info.access = access_mode(modes);
            }
            return;
        }
        _ => return,
    };
    // A role change outlives the transaction unless LOCAL: keep the client on its connection
    // (re-applying it elsewhere could fail or run with different privileges).
    if !local && (name == "role" || name == "session_authorization") {
        info.pins = Some(PinReason::SetRole);
    }
    info.set = Some(SetStmt::Set { name, value, local });
}
