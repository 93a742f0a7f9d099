//! Requests the proxy runs in another form: a simple Query as an auto-prepared
//! statement (AutoQuery), an unnamed statement renamed to one the server keeps
//! (Renamed), and the proxy's own prepares between transactions (Prepare).

use super::*;
use crate::engine::exchange::auto_prepare;
use crate::router::parameterize::{parameterize, Parameterized};

const READ: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 57203";
const WRITE: &str = "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 98765";
const UNNAMED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

fn stale() -> Vec<u8> {
    error("0A000", "cached plan must not change result type")
}

fn rows() -> Vec<Vec<u8>> {
    vec![
        row_description(&["abalance"]),
        data_row(&["0"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ]
}

fn tags(sent: &[Vec<u8>]) -> Vec<u8> {
    sent.iter().map(|m| m[0]).collect()
}

fn lifted(sql: &str) -> Parameterized {
    parameterize(sql).expect("liftable")
}

/// The Query `sql` sent as an auto-prepared statement; what reaches the server, and the
/// statement's name.
fn auto(h: &mut Harness, sql: &str, rerunnable: bool) -> (Vec<Vec<u8>>, String) {
    let l = lifted(sql);
    let q = query(sql);
    let frame = Frame {
        tag: b'Q',
        data: BytesMut::from(&q[..]),
    };
    let mut to = BytesMut::new();
    auto_prepare::send(frame, &l, &mut h.prepared, &mut h.p, &mut to, rerunnable);
    (msgs(&to), kept::name(kept::id_of(&l)).to_string())
}

/// READ run once, answered: the server keeps its statement.
fn kept_read(h: &mut Harness) -> String {
    let (_, name) = auto(h, READ, true);
    h.replies(&[parse_complete(), bind_complete()]);
    h.replies(&rows());
    h.client();
    name
}

/// `Parse Bind Describe Execute Sync` on the client's unnamed statement.
fn request() -> Vec<u8> {
    cat(&[
        parse("", UNNAMED),
        bind("", "", &["7"]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ])
}

/// request() sent renamed; what reaches the server, and the statement's name.
fn renamed(h: &mut Harness) -> (Vec<Vec<u8>>, String) {
    let req = request();
    let read = h.stmts.lane_read(&req, &h.cache).expect("a lane read");
    let name = read.ensure.0.to_string();
    let mut to = BytesMut::new();
    crate::engine::exchange::statements::send_renamed(
        read,
        req.into(),
        &mut h.prepared,
        &mut h.p,
        &mut to,
    );
    (msgs(&to), name)
}

fn kept_renamed(h: &mut Harness) -> String {
    let (_, name) = renamed(h);
    h.replies(&[parse_complete(), bind_complete()]);
    h.replies(&rows());
    h.client();
    name
}

fn with_parse_complete(replies: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    [vec![parse_complete()], replies].concat()
}

#[test]
fn an_auto_query_hides_its_parse_and_bind_and_forwards_the_rest() {
    let mut h = Harness::new();
    let (sent, name) = auto(&mut h, READ, true);
    assert_eq!(tags(&sent), b"PBDES");
    assert_eq!(parse_name(&sent[0]), name);
    assert!(!h.replies(&[parse_complete()])[0]);
    assert!(!h.replies(&[bind_complete()])[0]);
    assert_eq!(h.replies(&rows()), [true; 4]);
    assert_eq!(h.client(), rows());
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    assert!(h.prepared.touch(&name));
    // Kept: the next one sends no Parse.
    let (sent, _) = auto(&mut h, READ, true);
    assert_eq!(tags(&sent), b"BDES");
    assert_eq!(h.replies(&[bind_complete()]), [false]);
    assert_eq!(h.replies(&rows()), [true; 4]);
    assert_eq!(h.client(), rows());
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn an_auto_query_without_rows_hides_no_data() {
    let mut h = Harness::new();
    auto(&mut h, WRITE, true);
    let replies = [
        parse_complete(),
        bind_complete(),
        no_data(),
        command_complete("UPDATE 1"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [false, false, false, true, true]);
    assert_eq!(h.client(), replies[3..]);
}

#[test]
fn an_auto_query_evicting_a_statement_hides_its_close_complete() {
    let mut h = Harness::new();
    h.prepared = PreparedSet::new(1);
    h.prepared.insert("old".into());
    let (sent, name) = auto(&mut h, READ, true);
    assert_eq!(tags(&sent), b"CPBDES");
    assert_eq!(sent[0], close(b'S', "old"));
    let hidden = [close_complete(), parse_complete(), bind_complete()];
    assert_eq!(h.replies(&hidden), [false; 3]);
    assert_eq!(h.replies(&rows()), [true; 4]);
    assert_eq!(h.client(), rows());
    assert!(h.prepared.touch(&name) && !h.prepared.touch("old"));
}

#[test]
fn an_auto_query_failing_before_execute_runs_the_query_as_sent() {
    let mut h = Harness::new();
    let name = kept_read(&mut h);
    auto(&mut h, READ, true);
    assert!(!h.reply(&stale()));
    assert!(h.reply(&notice("still asynchronous")));
    assert!(!h.reply(&ready(b'I')));
    assert_eq!(h.client(), [notice("still asynchronous")]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, false));
    // The stale statement is closed and the client's Query runs as sent.
    assert_eq!(h.resend(), Some(vec![close(b'S', &name), query(READ)]));
    assert!(!h.prepared.touch(&name));
    assert!(!h.reply(&close_complete()));
    assert_eq!(h.replies(&rows()), [true; 4]);
    assert_eq!(h.client(), rows());
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn an_auto_query_whose_parse_fails_runs_the_query_as_sent_without_a_close() {
    let mut h = Harness::new();
    let (_, name) = auto(&mut h, READ, true);
    let bad = error("42P01", "relation \"pgbench_accounts\" does not exist");
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [false, false]);
    assert!(!h.prepared.touch(&name));
    assert_eq!(h.resend(), Some(vec![query(READ)]));
    // The Query as sent fails the same way, and the client sees that.
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [bad, ready(b'I')]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn an_auto_query_error_after_bind_is_forwarded() {
    let mut h = Harness::new();
    let (_, name) = auto(&mut h, READ, true);
    let bad = error("22012", "division by zero");
    let replies = [
        parse_complete(),
        bind_complete(),
        row_description(&["abalance"]),
        bad,
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [false, false, true, true, true]);
    assert_eq!(h.client(), replies[2..]);
    assert_eq!(h.resend(), None);
    assert!(h.prepared.touch(&name));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn an_auto_query_failing_with_a_request_pipelined_behind_it_delivers_the_error() {
    let mut h = Harness::new();
    let name = kept_read(&mut h);
    auto(&mut h, READ, true);
    h.send(&[query("SELECT 1")]);
    assert!(!h.reply(&stale()));
    assert!(h.reply(&ready(b'I')));
    assert_eq!(h.client(), [stale(), ready(b'I')]);
    assert_eq!(h.p.completed(), 2);
    // Closed after what is already in flight, flushed since no Sync follows.
    assert_eq!(h.resend(), Some(vec![close(b'S', &name), flush()]));
    assert!(!h.prepared.touch(&name));
    let behind = [
        row_description(&["?column?"]),
        data_row(&["1"]),
        command_complete("SELECT 1"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&behind), [true; 4]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (3, false));
    assert!(!h.reply(&close_complete()));
    assert!(h.p.is_empty());
}

#[test]
fn an_auto_query_error_not_about_the_statement_is_forwarded_as_is() {
    for bad in [
        error("57014", "canceling statement due to user request"),
        fatal("08006", "connection failure"),
    ] {
        let mut h = Harness::new();
        let name = kept_read(&mut h);
        auto(&mut h, READ, true);
        assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [true, true]);
        assert_eq!(h.client(), [bad, ready(b'I')]);
        assert_eq!(h.resend(), None);
        assert!(h.prepared.touch(&name));
        assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    }
}

#[test]
fn an_auto_query_in_a_transaction_block_forwards_its_error() {
    let mut h = Harness::new();
    kept_read(&mut h);
    auto(&mut h, READ, false);
    assert_eq!(h.replies(&[stale(), ready(b'E')]), [true, true]);
    assert_eq!(h.client(), [stale(), ready(b'E')]);
    assert_eq!(h.resend(), None);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn a_renamed_request_gets_its_parse_complete_just_before_bind_complete() {
    let mut h = Harness::new();
    let (sent, name) = renamed(&mut h);
    assert_eq!(tags(&sent), b"PBDES");
    assert_eq!(parse_name(&sent[0]), name);
    assert_eq!(sent[1], bind("", &name, &["7"]));
    assert!(!h.reply(&parse_complete()));
    assert!(h.client().is_empty());
    let replies = [vec![bind_complete()], rows()].concat();
    assert_eq!(h.replies(&replies), [true; 5]);
    assert_eq!(h.client(), with_parse_complete(replies.clone()));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    // Kept: no Parse sent, the client's ParseComplete still comes before BindComplete.
    let (sent, _) = renamed(&mut h);
    assert_eq!(tags(&sent), b"BDES");
    assert_eq!(h.replies(&replies), [true; 5]);
    assert_eq!(h.client(), with_parse_complete(replies));
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn a_renamed_request_failing_before_bind_runs_again_as_sent() {
    let mut h = Harness::new();
    let name = kept_renamed(&mut h);
    renamed(&mut h);
    assert_eq!(h.replies(&[stale(), ready(b'I')]), [false, false]);
    assert!(h.client().is_empty());
    let mut resend = vec![close(b'S', &name)];
    resend.extend(msgs(&request()));
    assert_eq!(h.resend(), Some(resend));
    assert!(!h.prepared.touch(&name));
    assert!(!h.reply(&close_complete()));
    // The request as sent: every reply is the client's.
    let replies = [vec![parse_complete(), bind_complete()], rows()].concat();
    assert_eq!(h.replies(&replies), [true; 6]);
    assert_eq!(h.client(), replies);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn a_renamed_request_whose_parse_fails_runs_again_without_a_close() {
    let mut h = Harness::new();
    let (_, name) = renamed(&mut h);
    let bad = error("42P01", "relation \"pgbench_accounts\" does not exist");
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [false, false]);
    assert!(!h.prepared.touch(&name));
    assert_eq!(h.resend(), Some(msgs(&request())));
    // Its own Parse fails too: the rest of the batch is skipped to the Sync.
    assert_eq!(h.replies(&[bad.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [bad, ready(b'I')]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn a_renamed_request_error_after_bind_is_forwarded() {
    let mut h = Harness::new();
    let (_, name) = renamed(&mut h);
    let bad = error("22012", "division by zero");
    let replies = [
        parse_complete(),
        bind_complete(),
        row_description(&["abalance"]),
        bad,
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [false, true, true, true, true]);
    assert_eq!(h.client(), with_parse_complete(replies[1..].to_vec()));
    assert_eq!(h.resend(), None);
    assert!(h.prepared.touch(&name));
}

#[test]
fn a_renamed_request_error_not_about_the_statement_is_forwarded_as_is() {
    let cancel = error("57014", "canceling statement due to user request");
    // Kept statement: the client's Parse had succeeded.
    let mut h = Harness::new();
    kept_renamed(&mut h);
    renamed(&mut h);
    assert_eq!(h.replies(&[cancel.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [parse_complete(), cancel.clone(), ready(b'I')]);
    // Its Parse cancelled: no ParseComplete, and the statement is not kept.
    let mut h = Harness::new();
    let (_, name) = renamed(&mut h);
    assert_eq!(h.replies(&[cancel.clone(), ready(b'I')]), [true, true]);
    assert_eq!(h.client(), [cancel, ready(b'I')]);
    assert!(!h.prepared.touch(&name));
    assert_eq!((h.resend(), h.p.is_empty()), (None, true));
}

#[test]
fn a_renamed_request_failing_with_a_request_pipelined_behind_it_delivers_the_error() {
    let mut h = Harness::new();
    let name = kept_renamed(&mut h);
    renamed(&mut h);
    h.send(&[query("SELECT 1")]);
    assert!(!h.reply(&stale()));
    assert!(h.reply(&ready(b'I')));
    assert_eq!(h.client(), [parse_complete(), stale(), ready(b'I')]);
    assert_eq!(h.p.completed(), 2);
    assert_eq!(h.resend(), Some(vec![close(b'S', &name), flush()]));
    assert!(!h.prepared.touch(&name));
}

#[test]
fn the_proxys_own_prepares_are_hidden_replies_and_all() {
    let mut h = Harness::new();
    let statements: Vec<(u64, Parameterized)> = [READ, WRITE]
        .iter()
        .map(|s| (kept::id_of(&lifted(s)), lifted(s)))
        .collect();
    let mut to = BytesMut::new();
    auto_prepare::send_prepares(&statements, &mut h.prepared, &mut h.p, &mut to);
    assert_eq!(tags(&msgs(&to)), b"PPS");
    let replies = [parse_complete(), parse_complete(), ready(b'I')];
    assert_eq!(h.replies(&replies), [false; 3]);
    assert!(h.client().is_empty());
    assert_eq!(
        (h.p.completed(), h.p.is_empty(), h.p.next_ord()),
        (0, true, 1)
    );
    for (id, _) in &statements {
        assert!(h.prepared.touch(&kept::name(*id)));
    }
}

#[test]
fn a_failed_prepare_forgets_it_and_the_statements_after_it_in_its_batch() {
    let sqls = [READ, WRITE, "DELETE FROM pgbench_history WHERE aid = 57203"];
    let statements: Vec<(u64, Parameterized)> = sqls
        .iter()
        .map(|s| (kept::id_of(&lifted(s)), lifted(s)))
        .collect();
    for failing in 0..statements.len() {
        let mut h = Harness::new();
        let mut to = BytesMut::new();
        auto_prepare::send_prepares(&statements, &mut h.prepared, &mut h.p, &mut to);
        let mut replies = vec![parse_complete(); failing];
        replies.extend([error("42P01", "relation does not exist"), ready(b'I')]);
        assert_eq!(h.replies(&replies), vec![false; failing + 2]);
        assert!(h.client().is_empty() && h.p.is_empty());
        for (i, (id, _)) in statements.iter().enumerate() {
            let name = kept::name(*id);
            assert_eq!(h.prepared.touch(&name), i < failing, "{failing}: {i}");
        }
    }
}
