//! The pipeline fed real server messages: what reaches the client, what the proxy says
//! itself, what it sends the server again, and what the connection keeps prepared.
//! COPY, asynchronous messages, function calls and ordinals are in
//! pipeline_flow_tests.rs; auto-prepared and renamed requests in pipeline_auto_tests.rs.

use super::*;
use crate::engine::exchange::fixtures::*;
use crate::engine::exchange::statements::ClientStatements;
use crate::protocol::Frame;
use crate::router::parse_cache::ParseCache;

#[path = "pipeline_flow_tests.rs"]
mod flow;

#[path = "pipeline_auto_tests.rs"]
mod auto;

/// One server connection and one client, driven as relay.rs drives them.
struct Harness {
    p: Pipeline,
    prepared: PreparedSet,
    /// What the client is sent, in order.
    out: BytesMut,
    stmts: ClientStatements,
    cache: ParseCache,
}

impl Harness {
    fn new() -> Self {
        Harness {
            p: Pipeline::default(),
            prepared: PreparedSet::new(16),
            out: BytesMut::new(),
            stmts: ClientStatements::default(),
            cache: ParseCache::new(64, vec![]),
        }
    }

    /// Client messages through the statements' rewrite; what reaches the server.
    fn send(&mut self, client: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut to_server = BytesMut::new();
        for m in client {
            let frame = Frame {
                tag: m[0],
                data: BytesMut::from(&m[..]),
            };
            let (p, prepared) = (&mut self.p, &mut self.prepared);
            self.stmts
                .rewrite(frame, &self.cache, prepared, p, &mut to_server);
        }
        msgs(&to_server)
    }

    /// One server message: forwarded to the client if the pipeline says so, then what
    /// it owes right behind.
    fn reply(&mut self, m: &[u8]) -> bool {
        let forward = self
            .p
            .on_server(m[0], &m[5..], &mut self.prepared, &mut self.out);
        if forward {
            self.out.extend_from_slice(m);
        }
        self.p.after_server(&mut self.out);
        forward
    }

    fn replies(&mut self, ms: &[Vec<u8>]) -> Vec<bool> {
        ms.iter().map(|m| self.reply(m)).collect()
    }

    /// What the client got since the last call.
    fn client(&mut self) -> Vec<Vec<u8>> {
        msgs(&self.out.split())
    }

    fn resend(&mut self) -> Option<Vec<Vec<u8>>> {
        self.p.take_resend().map(|b| msgs(&b))
    }

    /// Prepares `name` as `sql` on this server connection; all answered.
    fn prepare(&mut self, name: &str, sql: &str) -> String {
        let sent = self.send(&[parse(name, sql), sync()]);
        self.replies(&[parse_complete(), ready(b'I')]);
        self.client();
        parse_name(&sent[0])
    }
}

fn select_one() -> Vec<Vec<u8>> {
    vec![
        row_description(&["?column?"]),
        data_row(&["1"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ]
}

#[test]
fn a_simple_query_is_forwarded_whole_and_completes_at_its_ready() {
    let mut h = Harness::new();
    assert_eq!(h.send(&[query("SELECT 1")]), [query("SELECT 1")]);
    assert_eq!(h.p.next_ord(), 2);
    let replies = select_one();
    assert_eq!(h.replies(&replies[..3]), [true; 3]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (0, false));
    assert!(h.reply(&replies[3]));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    assert_eq!(h.client(), replies);
    assert_eq!(h.resend(), None);
}

#[test]
fn a_simple_query_error_is_forwarded_and_its_ready_completes_it() {
    let mut h = Harness::new();
    h.send(&[query("SELECT * FROM nowhere")]);
    let replies = [
        error("42P01", "relation \"nowhere\" does not exist"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [true, true]);
    assert_eq!(h.client(), replies);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn a_query_of_several_statements_or_none_completes_at_its_one_ready() {
    let mut h = Harness::new();
    h.send(&[query("SELECT 1; SELECT 1"), query("")]);
    let mut replies = select_one();
    replies.splice(0..0, select_one()[..3].to_vec());
    replies.extend([empty_query(), ready(b'I')]);
    assert_eq!(h.replies(&replies[..6]), [true; 6]);
    assert_eq!(h.p.completed(), 0);
    assert!(h.reply(&replies[6]));
    assert_eq!(h.p.completed(), 1);
    assert_eq!(h.replies(&replies[7..]), [true, true]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    assert_eq!(h.client(), replies);
}

#[test]
fn an_extended_batch_is_forwarded_reply_by_reply() {
    let mut h = Harness::new();
    let batch = [
        parse("", "SELECT 1"),
        bind("", "", &[]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ];
    assert_eq!(
        h.send(&batch),
        batch,
        "the unnamed statement passes through"
    );
    let mut replies = vec![parse_complete(), bind_complete()];
    replies.extend(select_one());
    assert_eq!(h.replies(&replies[..5]), [true; 5]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (0, false));
    assert!(h.reply(&replies[5]));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    assert_eq!(h.client(), replies);
}

#[test]
fn describe_statement_owes_parameter_description_then_rows_or_no_data() {
    let mut h = Harness::new();
    let sent = h.send(&[
        parse("s1", "SELECT $1::int"),
        describe(b'S', "s1"),
        parse("s2", "DELETE FROM t"),
        describe(b'S', "s2"),
        sync(),
    ]);
    let (s1, s2) = (parse_name(&sent[0]), parse_name(&sent[2]));
    assert!(s1.starts_with("pgw_") && s1 != s2);
    assert_eq!(sent[1], describe(b'S', &s1), "described by its server name");
    let replies = [
        parse_complete(),
        parameter_description(&[23]),
        row_description(&["int4"]),
        parse_complete(),
        parameter_description(&[]),
        no_data(),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [true; 7]);
    assert_eq!(h.client(), replies);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    assert!(h.prepared.touch(&s1) && h.prepared.touch(&s2));
}

#[test]
fn an_error_mid_batch_skips_expectations_to_the_sync() {
    let mut h = Harness::new();
    h.send(&[
        parse("", "SELECT $1::int"),
        bind("", "", &["x"]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
        query("SELECT 1"),
    ]);
    let bad = error("22P02", "invalid input syntax for type integer: \"x\"");
    assert_eq!(h.replies(&[parse_complete(), bad.clone()]), [true, true]);
    // The skipped Describe and Execute expect nothing more: the next replies are the
    // Sync's, then the Query's.
    assert!(h.reply(&ready(b'I')));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, false));
    assert_eq!(h.replies(&select_one()), [true; 4]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    let mut expected = vec![parse_complete(), bad, ready(b'I')];
    expected.extend(select_one());
    assert_eq!(h.client(), expected);
}

#[test]
fn a_failed_parse_forgets_its_statement_and_those_skipped_after_it() {
    let mut h = Harness::new();
    h.prepared.insert("kept_before".into());
    let sent = h.send(&[
        parse("s1", "SELECT 1"),
        parse("s2", "SELECT nope"),
        parse("s3", "SELECT 3"),
        bind("", "s1", &[]),
        execute("", 0),
        sync(),
    ]);
    let names: Vec<String> = sent[..3].iter().map(|m| parse_name(m)).collect();
    assert_eq!(h.prepared.len(), 4);
    let bad = error("42703", "column \"nope\" does not exist");
    assert_eq!(
        h.replies(&[parse_complete(), bad.clone(), ready(b'I')]),
        [true; 3]
    );
    assert_eq!(h.client(), [parse_complete(), bad, ready(b'I')]);
    assert!(h.prepared.touch("kept_before") && h.prepared.touch(&names[0]));
    assert!(!h.prepared.touch(&names[1]) && !h.prepared.touch(&names[2]));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn replies_the_proxy_owed_behind_an_error_are_dropped_with_the_batch() {
    let mut h = Harness::new();
    h.prepare("s1", "SELECT 1");
    // Another client on the same server connection: its Parse of s1 is dropped and its
    // Close kept from the server, both answered by the proxy, in order.
    h.stmts = ClientStatements::default();
    let sent = h.send(&[
        bind("", "", &[]),
        execute("", 0),
        parse("s1", "SELECT 1"),
        close(b'S', "s1"),
        sync(),
    ]);
    assert_eq!(sent, [bind("", "", &[]), execute("", 0), sync()]);
    let bad = error("26000", "unnamed prepared statement does not exist");
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [bad, ready(b'I')]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn a_parse_the_server_has_is_answered_by_the_proxy_before_the_next_reply() {
    let mut h = Harness::new();
    let name = h.prepare("s1", "SELECT 1");
    h.stmts = ClientStatements::default(); // another client, same server connection
    let sent = h.send(&[
        parse("s1", "SELECT 1"),
        bind("", "s1", &[]),
        execute("", 0),
        sync(),
    ]);
    assert_eq!(sent, [bind("", &name, &[]), execute("", 0), sync()]);
    // The ParseComplete goes out when the server's first reply comes.
    let mut out = BytesMut::new();
    assert!(h.p.on_server(b'2', b"", &mut h.prepared, &mut out));
    assert_eq!(msgs(&out), [parse_complete()]);
    let replies = [command_complete("SELECT 0"), ready(b'I')];
    assert_eq!(h.replies(&replies), [true, true]);
    assert_eq!(h.client(), replies);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn an_owed_parse_complete_before_a_flush_is_drained_at_once() {
    let mut h = Harness::new();
    h.prepare("s1", "SELECT 1");
    h.stmts = ClientStatements::default();
    assert_eq!(h.send(&[parse("s1", "SELECT 1"), flush()]), [flush()]);
    assert!(!h.p.is_empty());
    h.p.drain_leading_injects(&mut h.out);
    assert_eq!(h.client(), [parse_complete()]);
    assert!(h.p.is_empty());
    assert_eq!(h.p.completed(), 1, "the earlier Sync's");
}

#[test]
fn an_owed_reply_behind_the_last_reply_goes_out_right_after_it() {
    let mut h = Harness::new();
    h.prepare("s1", "SELECT 1");
    h.stmts = ClientStatements::default();
    h.send(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute("", 0),
        parse("s1", "SELECT 1"),
        flush(),
    ]);
    assert_eq!(
        h.replies(&[parse_complete(), bind_complete()]),
        [true, true]
    );
    let mut out = BytesMut::new();
    assert!(h
        .p
        .on_server(b'C', b"SELECT 0\0", &mut h.prepared, &mut out));
    assert!(out.is_empty(), "nothing before the CommandComplete");
    out.extend_from_slice(&command_complete("SELECT 0"));
    h.p.after_server(&mut out);
    assert_eq!(msgs(&out), [command_complete("SELECT 0"), parse_complete()]);
    assert!(h.p.is_empty());
}

#[test]
fn closing_a_client_statement_is_answered_by_the_proxy() {
    let mut h = Harness::new();
    let name = h.prepare("s1", "SELECT 1");
    assert_eq!(h.send(&[close(b'S', "s1"), sync()]), [sync()]);
    h.p.drain_leading_injects(&mut h.out);
    assert_eq!(h.client(), [close_complete()]);
    assert!(h.reply(&ready(b'I')));
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    assert!(
        h.prepared.touch(&name),
        "the server keeps it for other clients"
    );
}

#[test]
fn a_client_close_of_a_portal_is_forwarded() {
    let mut h = Harness::new();
    let sent = h.send(&[close(b'P', ""), sync()]);
    assert_eq!(sent, [close(b'P', ""), sync()]);
    assert_eq!(h.replies(&[close_complete(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [close_complete(), ready(b'I')]);
}

#[test]
fn a_statement_the_server_lacks_is_prepared_again_and_its_parse_complete_hidden() {
    let mut h = Harness::new();
    let name = h.prepare("s1", "SELECT 1");
    h.prepared = PreparedSet::new(16); // attached to another server connection
    h.stmts.attached();
    let sent = h.send(&[bind("", "s1", &[]), execute("", 0), sync()]);
    assert_eq!(sent.len(), 4);
    assert_eq!((sent[0][0], parse_name(&sent[0])), (b'P', name.clone()));
    assert_eq!(sent[1], bind("", &name, &[]));
    let replies = [
        parse_complete(),
        bind_complete(),
        command_complete("SELECT 0"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [false, true, true, true]);
    assert_eq!(h.client(), replies[1..]);
    assert!(h.prepared.touch(&name));
}

#[test]
fn a_failed_re_prepare_forgets_the_statement_and_skips_to_the_sync() {
    let mut h = Harness::new();
    let name = h.prepare("s1", "SELECT a FROM t");
    h.prepared = PreparedSet::new(16);
    h.send(&[bind("", "s1", &[]), execute("", 0), sync()]);
    let bad = error("42P01", "relation \"t\" does not exist");
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [bad, ready(b'I')]);
    assert!(!h.prepared.touch(&name));
    assert!(h.p.is_empty());
}

#[test]
fn the_unnamed_statement_is_sent_again_to_a_new_server_and_its_parse_complete_hidden() {
    let mut h = Harness::new();
    h.send(&[parse("", "SELECT 1"), sync()]);
    h.replies(&[parse_complete(), ready(b'I')]);
    h.client();
    h.stmts.attached();
    let sent = h.send(&[bind("", "", &[]), execute("", 0), sync()]);
    assert_eq!(sent[0], parse("", "SELECT 1"));
    let replies = [parse_complete(), bind_complete(), ready(b'I')];
    assert_eq!(h.replies(&replies), [false, true, true]);
    assert_eq!(h.client(), replies[1..]);
}

#[test]
fn the_close_of_a_statement_evicted_for_room_is_hidden() {
    let mut h = Harness::new();
    h.prepared = PreparedSet::new(1);
    h.prepared.insert("old".into());
    let sent = h.send(&[parse("s1", "SELECT 1"), sync()]);
    assert_eq!(sent[0], close(b'S', "old"));
    let replies = [close_complete(), parse_complete(), ready(b'I')];
    assert_eq!(h.replies(&replies), [false, true, true]);
    assert_eq!(h.client(), replies[1..]);
    assert!(!h.prepared.touch("old") && h.prepared.touch(&parse_name(&sent[1])));
}
