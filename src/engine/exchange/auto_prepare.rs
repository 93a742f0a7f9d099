//! Runs a simple-protocol statement whose literals can be lifted (SELECT, INSERT, UPDATE,
//! DELETE), or one of these on the unnamed statement of the extended protocol, as a
//! prepared statement on the server (`pool.auto_prepare`): PostgreSQL then parses and
//! plans it once per connection instead of on every call. The client still sees the
//! replies of what it sent.

use super::kept::{id_of, name};
use super::pipeline::{Expect, Pipeline};
use crate::backend::prepared::PreparedSet;
use crate::protocol::{to_server, Frame};
use crate::router::analysis::{Analysis, StatementKind};
use crate::router::parameterize::Parameterized;
use bytes::BytesMut;
use std::ops::Deref;
use std::sync::Arc;

/// Whether the analysis allows running the Query as a prepared statement: one SELECT,
/// INSERT, UPDATE or DELETE that changes no session state.
pub(crate) fn eligible(a: &Analysis) -> bool {
    use StatementKind::*;
    matches!(a.statements.as_slice(),
        [s] if matches!(s.kind, Select | Insert | Update | Delete) && s.pins.is_none() && s.set.is_none())
}

/// Notes `name` as prepared on this connection; the statement evicted for room, if
/// any, is closed (its CloseComplete hidden). The caller sends the Parse.
pub(crate) fn add_statement(
    name: Arc<str>,
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
) {
    if let Some(evicted) = prepared.insert(name) {
        to_server::close_statement(to_server, &evicted);
        pipeline.push(Expect::Close { hide: true });
    }
}

/// The Parse that creates the server statement `name` for `p`.
pub(crate) fn put_parse(name: &str, p: &Parameterized, to_server: &mut BytesMut) {
    to_server::parse(to_server, name, &p.sql, &p.types);
}

/// Bind (the literals of the Query body `sql`, in text), Describe and Execute of the
/// server statement `name`: what the simple protocol would have run, without Sync.
pub(crate) fn put_execute(name: &str, p: &Parameterized, sql: &[u8], to_server: &mut BytesMut) {
    // All three messages at once: values are slices of `sql`, each with a 4-byte length.
    to_server.reserve(32 + name.len() + sql.len() + 4 * p.values.len());
    // Every parameter and every column in text, as the simple protocol sends them.
    to_server::bind(to_server, name, sql, &p.values, 0);
    to_server::describe_portal(to_server);
    to_server::execute(to_server);
}

/// Whether a Query inside a transaction block may run as a statement the server keeps:
/// one INSERT, UPDATE or DELETE without RETURNING. Without a result it cannot meet
/// "cached plan must not change result type", the one error a kept statement gives
/// that the Query as sent would not; an error there aborts the block, so the Query
/// could not run again as sent.
pub(crate) fn eligible_in_block(a: &Analysis, sql: &str) -> bool {
    use StatementKind::*;
    matches!(a.statements.as_slice(), [s] if matches!(s.kind, Insert | Update | Delete))
        && !crate::router::text::contains_ci(sql.as_bytes(), b"returning")
}

/// Sends the Query in `frame` as [Parse] Bind Describe Execute Sync of the statement for
/// `p`, preparing it first if this server connection lacks it. `rerunnable`: outside a
/// transaction block, so an error before it executes may be answered by running the
/// Query as sent.
pub(crate) fn send(
    frame: Frame,
    p: &Parameterized,
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
    rerunnable: bool,
) {
    let id = id_of(p);
    let name = name(id);
    let parse_pending = !prepared.touch(&name);
    if parse_pending {
        add_statement(name.deref().into(), prepared, pipeline, to_server);
        put_parse(&name, p, to_server);
    }
    put_execute(&name, p, frame.body(), to_server);
    to_server::sync(to_server);
    pipeline.push(Expect::AutoQuery {
        ord: 0,
        id,
        query: frame.data.freeze(),
        parse_pending,
        bound: false,
        rerunnable,
        failed: None,
    });
}

/// Most statements prepared between two transactions (also bounded by the connection's
/// `pool.prepared_statements_per_server`).
pub(crate) const PREPARES_PER_IDLE: usize = 8;

/// Prepares, once the server is out of any transaction, the statements of writes that
/// ran as sent inside one because this connection lacked them: the next transaction
/// here runs them prepared. Replies, a failed Parse included, are hidden. Closes of
/// statements evicted for room go first: they cannot fail, so a failed Parse (after
/// which the server skips to the Sync) skips none of them.
pub(crate) fn send_prepares(
    lifted: &[(u64, Parameterized)],
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
) {
    let mut parses = BytesMut::new();
    let mut names = Vec::new();
    let most = PREPARES_PER_IDLE.min(prepared.capacity());
    for (id, l) in lifted {
        let stmt = name(*id);
        if names.len() == most || prepared.touch(&stmt) {
            continue;
        }
        let name: Arc<str> = stmt.deref().into();
        add_statement(name.clone(), prepared, pipeline, to_server);
        put_parse(&name, l, &mut parses);
        names.push(name);
    }
    if names.is_empty() {
        return;
    }
    to_server.unsplit(parses);
    for name in names {
        pipeline.push(Expect::Prepare { name });
    }
    to_server::sync(to_server);
    pipeline.push(Expect::PrepareSync);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_plain_statement_runs_kept() {
        use crate::router::analysis::analyze;
        assert!(eligible(&analyze("select * from t where id = 123", &[])));
        assert!(eligible(&analyze("update t set v = 1 where id = 123", &[])));
        assert!(!eligible(&analyze("select 1; select 2", &[])));
        assert!(!eligible(&analyze("set search_path = a", &[])));
        assert!(!eligible(&analyze("create table x (a int)", &[])));
    }
}
