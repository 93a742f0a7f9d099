//! The exchange fed byte fixtures, as the relay feeds it: client messages in, what goes
//! to the server out; server messages in, what the client sees out; and what it learnt
//! (commits to capture, settings kept, pins). The pipeline's own cases are in
//! pipeline_tests.rs and its siblings.

use super::fixtures::*;
use super::*;
use crate::config::load_str;
use crate::protocol::walk;

// --- The rig: an exchange with everything it reads and changes. ---

struct Rig {
    x: Exchange,
    session: Session,
    config: Config,
    cache: ParseCache,
    prepared: PreparedSet,
    applied: Vec<(String, String)>,
    params: Vec<(String, String)>,
    routed: Option<Arc<Analysis>>,
    to_server: BytesMut,
    out: BytesMut,
    committed: Vec<Committed>,
}

macro_rules! cx {
    ($r:expr) => {
        Ctx {
            session: &mut $r.session,
            config: &$r.config,
            parse_cache: &$r.cache,
            routed: &mut $r.routed,
            server: ServerBook {
                prepared: &mut $r.prepared,
                applied: &mut $r.applied,
                params: &mut $r.params,
            },
        }
    };
}

impl Rig {
    fn new(auto_prepare: bool) -> Rig {
        let config = load_str(&format!(
            "users: [{{name: app, password: app}}]\n\
             nodes: [{{name: p, host: 127.0.0.1, port: 5432, role: primary}}]\n\
             pool: {{auto_prepare: {auto_prepare}}}\n"
        ))
        .expect("config");
        Rig {
            x: Exchange::new(),
            session: Session::for_tests(&[]),
            config,
            cache: ParseCache::new(64, Vec::new()),
            prepared: PreparedSet::new(16),
            applied: Vec::new(),
            params: Vec::new(),
            routed: None,
            to_server: BytesMut::new(),
            out: BytesMut::new(),
            committed: Vec::new(),
        }
    }

    /// A request the relay starts with: offered for renaming first, as the relay does.
    fn request(&mut self, bytes: &[u8]) {
        self.session.statements.attached();
        let first = BytesMut::from(bytes);
        if let Some(first) = self
            .x
            .send_renamed(first, &mut cx!(self), &mut self.to_server)
        {
            self.client(&first);
        }
    }

    /// Client messages that come while the server is attached.
    fn client(&mut self, bytes: &[u8]) {
        for frame in walk::split_frames(BytesMut::from(bytes)) {
            self.x
                .client_frame(frame, &mut cx!(self), &mut self.to_server);
        }
    }

    fn server(&mut self, parts: &[Vec<u8>]) {
        for frame in walk::split_frames(BytesMut::from(&parts.concat()[..])) {
            let c = self.x.server_frame(
                frame,
                &mut cx!(self),
                &mut self.out,
                &mut self.to_server,
                true,
            );
            self.committed.extend(c);
        }
    }

    fn sent(&mut self) -> Vec<Vec<u8>> {
        msgs(&std::mem::take(&mut self.to_server))
    }

    fn got(&mut self) -> Vec<Vec<u8>> {
        self.x.pipeline.drain_leading_injects(&mut self.out);
        msgs(&std::mem::take(&mut self.out))
    }

    fn commits(&mut self) -> Vec<(Vec<String>, bool)> {
        std::mem::take(&mut self.committed)
            .into_iter()
            .map(|c| (c.tables, c.may_be_unflushed))
            .collect()
    }
}

fn tables(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// --- Transactions and what they report. ---

#[test]
fn an_autocommit_write_reports_its_commit_with_the_tables_it_wrote() {
    let mut r = Rig::new(false);
    let q = query("update t set v = 1 where id = 2");
    r.request(&q);
    assert_eq!(r.sent(), [q]);
    assert!(!r.x.idle());
    r.server(&[command_complete("UPDATE 1"), ready(b'I')]);
    assert_eq!(r.got(), [command_complete("UPDATE 1"), ready(b'I')]);
    assert_eq!(r.commits(), [(tables(&["t"]), false)]);
    assert!(r.x.idle());
}

#[test]
fn a_schema_change_or_a_write_of_unnamed_tables_moves_the_catalog_clock() {
    let catalog = crate::consistency::CATALOG;
    // (request, its reply's command tag, tables the commit reports)
    let cases = [
        (
            "create type mood as enum ('a')",
            "CREATE TYPE",
            vec![catalog],
        ),
        (
            "alter table t add column c int",
            "ALTER TABLE",
            vec!["t", catalog],
        ),
        ("grant select on t to app", "GRANT", vec![catalog]),
        ("call refill()", "CALL", vec![catalog]),
        ("commit prepared 'x'", "COMMIT PREPARED", vec![catalog]),
        ("update t set v = 1", "UPDATE 1", vec!["t"]),
    ];
    for (sql, tag, want) in cases {
        let mut r = Rig::new(false);
        r.request(&query(sql));
        r.server(&[command_complete(tag), ready(b'I')]);
        assert_eq!(r.commits(), [(tables(&want), false)], "{sql}");
    }
    // PREPARE TRANSACTION ends the block: its commit of the catalog is reported then.
    let mut r = Rig::new(false);
    r.request(&query("begin"));
    r.server(&[command_complete("BEGIN"), ready(b'T')]);
    r.client(&query("insert into t values (1)"));
    r.server(&[command_complete("INSERT 0 1"), ready(b'T')]);
    r.client(&query("prepare transaction 'x'"));
    r.server(&[command_complete("PREPARE TRANSACTION"), ready(b'I')]);
    assert_eq!(r.commits(), [(tables(&["t", catalog]), false)]);
}

#[test]
fn a_block_reports_its_writes_only_at_its_commit() {
    let mut r = Rig::new(false);
    r.request(&query("begin"));
    r.server(&[command_complete("BEGIN"), ready(b'T')]);
    r.client(&query("update t set v = 1"));
    r.server(&[command_complete("UPDATE 1"), ready(b'T')]);
    r.client(&query("insert into u values (1)"));
    r.server(&[command_complete("INSERT 0 1"), ready(b'T')]);
    assert!(r.commits().is_empty());
    assert!(!r.x.idle(), "a transaction is open");
    assert!(r.x.quiet());
    r.client(&query("commit"));
    r.server(&[command_complete("COMMIT"), ready(b'I')]);
    assert_eq!(r.commits(), [(tables(&["t", "u"]), false)]);
    assert!(r.x.idle());
}

/// A client request and the server's replies to it.
type Turn = (Vec<u8>, Vec<Vec<u8>>);

#[test]
fn a_block_that_did_not_commit_reports_nothing() {
    // (requests and their replies): rolled back; aborted then COMMIT (answered ROLLBACK);
    // an autocommit write that failed.
    let cases: Vec<Vec<Turn>> = vec![
        vec![
            (query("begin"), vec![command_complete("BEGIN"), ready(b'T')]),
            (
                query("update t set v = 1"),
                vec![command_complete("UPDATE 1"), ready(b'T')],
            ),
            (
                query("rollback"),
                vec![command_complete("ROLLBACK"), ready(b'I')],
            ),
        ],
        vec![
            (query("begin"), vec![command_complete("BEGIN"), ready(b'T')]),
            (
                query("update t set v = 1"),
                vec![error("23505", "duplicate"), ready(b'E')],
            ),
            (
                query("commit"),
                vec![command_complete("ROLLBACK"), ready(b'I')],
            ),
        ],
        vec![(
            query("update t set v = 1"),
            vec![error("23505", "duplicate"), ready(b'I')],
        )],
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let mut r = Rig::new(false);
        for (n, (q, replies)) in case.into_iter().enumerate() {
            if n == 0 {
                r.request(&q);
            } else {
                r.client(&q);
            }
            r.server(&replies);
            assert_eq!(r.got(), replies, "case {i}: every reply reaches the client");
        }
        assert!(r.commits().is_empty(), "case {i}");
        assert!(r.x.idle(), "case {i}");
    }
}

#[test]
fn a_commit_whose_sql_may_turn_synchronous_commit_off_is_marked_unflushed() {
    let mut r = Rig::new(false);
    r.request(&query("begin"));
    r.server(&[command_complete("BEGIN"), ready(b'T')]);
    r.client(&query("set local synchronous_commit = off"));
    r.server(&[command_complete("SET"), ready(b'T')]);
    r.client(&query("delete from t"));
    r.server(&[command_complete("DELETE 3"), ready(b'T')]);
    r.client(&query("commit"));
    r.server(&[command_complete("COMMIT"), ready(b'I')]);
    assert_eq!(r.commits(), [(tables(&["t"]), true)]);
}

#[test]
fn requests_pipelined_behind_one_another_count_at_their_own_ready_for_query() {
    let mut r = Rig::new(false);
    let first = [
        parse("", "update t set v = 1"),
        bind("", "", &[]),
        execute("", 0),
        sync(),
    ]
    .concat();
    let second = [
        parse("", "update u set v = 1"),
        bind("", "", &[]),
        execute("", 0),
        sync(),
    ]
    .concat();
    r.request(&[first.clone(), second.clone()].concat());
    assert_eq!(r.sent(), msgs(&[first, second].concat()));
    // The first fails (the server skips to its Sync); the second commits.
    r.server(&[error("42501", "permission denied"), ready(b'I')]);
    assert!(r.commits().is_empty());
    assert!(!r.x.idle(), "the second request is still owed");
    r.server(&[
        parse_complete(),
        bind_complete(),
        command_complete("UPDATE 1"),
        ready(b'I'),
    ]);
    assert_eq!(r.commits(), [(tables(&["u"]), false)]);
    assert!(r.x.idle());
}

// --- Session state the exchange follows. ---

#[test]
fn a_session_set_is_kept_for_the_client_once_committed() {
    let mut r = Rig::new(false);
    r.request(&query("set search_path = a"));
    r.server(&[command_complete("SET"), ready(b'I')]);
    let kept = vec![("search_path".to_string(), "a".to_string())];
    assert_eq!(r.session.params, kept);
    assert_eq!(r.applied, kept, "the server connection carries it");
    // Under a block that rolls back it is not.
    r.client(&query("begin; set work_mem = '1MB'"));
    r.server(&[
        command_complete("BEGIN"),
        command_complete("SET"),
        ready(b'T'),
    ]);
    r.client(&query("rollback"));
    r.server(&[command_complete("ROLLBACK"), ready(b'I')]);
    assert_eq!(r.session.params, kept);
}

#[test]
fn a_rollback_to_savepoint_after_a_set_under_it_pins_the_session() {
    let mut r = Rig::new(false);
    r.request(&query("begin; savepoint s; set search_path = a"));
    assert_eq!(r.session.pinned, None);
    r.client(&query("rollback to savepoint s"));
    assert_eq!(r.session.pinned, Some(PinReason::SavepointUndoesSet));
}

#[test]
fn the_servers_parameter_reports_are_recorded_and_passed_on() {
    let mut r = Rig::new(false);
    r.request(&query("set timezone = 'UTC'"));
    r.server(&[
        parameter_status("TimeZone", "UTC"),
        command_complete("SET"),
        ready(b'I'),
    ]);
    assert_eq!(r.params, [("TimeZone".to_string(), "UTC".to_string())]);
    assert_eq!(r.got()[0], parameter_status("TimeZone", "UTC"));
}

// --- auto_prepare: simple Queries and unnamed statements as kept statements. ---

#[test]
fn a_simple_read_runs_as_a_kept_statement_and_the_client_sees_the_simple_reply() {
    let mut r = Rig::new(true);
    r.request(&query("select v from t where id = 57203"));
    let sent = r.sent();
    let tags: Vec<u8> = sent.iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"PBDES");
    let name = parse_name(&sent[0]);
    assert!(name.starts_with("pgw_q"), "{name}");
    assert_eq!(sent[1], bind("", &name, &["57203"]));
    let simple = [
        row_description(&["v"]),
        data_row(&["7"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ];
    r.server(&[vec![parse_complete(), bind_complete()], simple.to_vec()].concat());
    assert_eq!(r.got(), simple);
    assert!(r.x.idle());
    // The same text with another literal: the server has the statement already.
    r.request(&query("select v from t where id = 57204"));
    let tags: Vec<u8> = r.sent().iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"BDES");
}

#[test]
fn a_kept_statement_gone_stale_runs_the_query_as_sent_and_the_client_sees_only_that() {
    let mut r = Rig::new(true);
    let q = query("select v from t where id = 57203");
    r.request(&q);
    let name = parse_name(&r.sent()[0]);
    r.server(&[
        parse_complete(),
        bind_complete(),
        row_description(&["v"]),
        data_row(&["7"]),
    ]);
    r.server(&[command_complete("SELECT 1"), ready(b'I')]);
    r.got();
    // After DDL the kept statement fails before it executes.
    r.request(&query("select v from t where id = 57203"));
    r.sent();
    r.server(&[
        error("0A000", "cached plan must not change result type"),
        ready(b'I'),
    ]);
    assert!(r.got().is_empty(), "the error is the proxy's to handle");
    let mut close = BytesMut::new();
    crate::protocol::to_server::close_statement(&mut close, &name);
    assert_eq!(r.sent(), [close.to_vec(), q]);
    let simple = [
        row_description(&["v"]),
        data_row(&["8"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ];
    r.server(&[vec![close_complete()], simple.to_vec()].concat());
    assert_eq!(r.got(), simple);
    assert!(r.x.idle());
}

#[test]
fn an_unnamed_statement_runs_renamed_and_its_parse_complete_comes_before_bind_complete() {
    let mut r = Rig::new(true);
    let req = [
        parse("", "select v from t where id = $1"),
        bind("", "", &["5"]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ]
    .concat();
    r.request(&req);
    let sent = r.sent();
    let tags: Vec<u8> = sent.iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"PBDES");
    let name = parse_name(&sent[0]);
    assert!(name.starts_with("pgw_") && !name.is_empty(), "{name}");
    assert_eq!(sent[1], bind("", &name, &["5"]));
    r.server(&[
        parse_complete(),
        bind_complete(),
        row_description(&["v"]),
        data_row(&["7"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ]);
    assert_eq!(
        r.got(),
        [
            parse_complete(),
            bind_complete(),
            row_description(&["v"]),
            data_row(&["7"]),
            command_complete("SELECT 1"),
            ready(b'I')
        ]
    );
    assert!(r.x.idle());
}

// --- COPY and portals keep the server attached. ---

#[test]
fn copy_from_stdin_keeps_the_server_until_the_copy_ends() {
    let mut r = Rig::new(false);
    r.request(&query("copy t from stdin"));
    r.server(&[copy_response(b'G')]);
    assert!(!r.x.idle(), "copying");
    r.client(&[copy_data("1\n"), copy_data("2\n"), copy_done()].concat());
    assert!(!r.x.idle(), "the server has not answered the COPY yet");
    r.server(&[command_complete("COPY 2"), ready(b'I')]);
    assert_eq!(
        r.got(),
        [copy_response(b'G'), command_complete("COPY 2"), ready(b'I')]
    );
    assert_eq!(r.commits(), [(tables(&["t"]), false)]);
    assert!(r.x.idle());
}

#[test]
fn a_suspended_portal_keeps_the_batch_open_until_its_sync() {
    let mut r = Rig::new(false);
    r.request(
        &[
            parse("", "select v from t"),
            bind("", "", &[]),
            execute("", 1),
            flush(),
        ]
        .concat(),
    );
    r.server(&[
        parse_complete(),
        bind_complete(),
        data_row(&["1"]),
        portal_suspended(),
    ]);
    assert!(!r.x.idle(), "the portal is open, no Sync yet");
    r.client(&[execute("", 0), sync()].concat());
    r.server(&[data_row(&["2"]), command_complete("SELECT 1"), ready(b'I')]);
    assert_eq!(
        r.got(),
        [
            parse_complete(),
            bind_complete(),
            data_row(&["1"]),
            portal_suspended(),
            data_row(&["2"]),
            command_complete("SELECT 1"),
            ready(b'I')
        ]
    );
    assert!(r.x.idle());
}
