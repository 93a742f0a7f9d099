//! COPY in and out, suspended portals, asynchronous messages, function calls, the
//! ordinals of pipelined requests and resynchronising on a ReadyForQuery out of step.

use super::*;

#[test]
fn syncs_pipelined_behind_a_copy_in_owe_nothing() {
    let mut h = Harness::new();
    // libpq's extended COPY: the batch's Sync reaches the server in COPY and is ignored;
    // the Sync after CopyDone ends it.
    h.send(&[
        parse("", "COPY t FROM STDIN"),
        bind("", "", &[]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ]);
    let started = [
        parse_complete(),
        bind_complete(),
        no_data(),
        copy_response(b'G'),
    ];
    assert_eq!(h.replies(&started), [true; 4]);
    h.send(&[
        copy_data("1\n"),
        sync(),
        copy_data("2\n"),
        copy_done(),
        sync(),
    ]);
    assert_eq!(h.p.next_ord(), 3, "the Sync while copying owed nothing");
    let done = [command_complete("COPY 2"), ready(b'I')];
    assert_eq!(h.replies(&done), [true, true]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    assert_eq!(h.client(), [&started[..], &done[..]].concat());
}

#[test]
fn copy_done_before_copy_in_response_ends_that_copy() {
    let mut h = Harness::new();
    h.send(&[query("COPY t FROM STDIN"), copy_data("1\n"), copy_done()]);
    let replies = [copy_response(b'G'), command_complete("COPY 1"), ready(b'I')];
    assert_eq!(h.replies(&replies), [true; 3]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    // Not still copying: a Sync now owes its ReadyForQuery.
    h.send(&[sync()]);
    assert_eq!(h.p.next_ord(), 3);
    // The same, extended, all sent at once: both Syncs end up as one ReadyForQuery.
    h.reply(&ready(b'I'));
    h.send(&[
        parse("", "COPY t FROM STDIN"),
        bind("", "", &[]),
        execute("", 0),
        sync(),
        copy_data("1\n"),
        copy_done(),
        sync(),
    ]);
    let replies = [
        parse_complete(),
        bind_complete(),
        copy_response(b'G'),
        command_complete("COPY 1"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [true; 5]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (4, true));
}

#[test]
fn a_copy_that_fails_before_it_starts_leaves_nothing_owed() {
    let mut h = Harness::new();
    h.send(&[
        query("COPY nowhere FROM STDIN"),
        copy_data("1\n"),
        copy_done(),
    ]);
    let bad = error("42P01", "relation \"nowhere\" does not exist");
    assert_eq!(h.replies(&[bad, ready(b'I')]), [true, true]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn an_error_during_copy_in_ends_it() {
    let mut h = Harness::new();
    h.send(&[
        parse("", "COPY t FROM STDIN"),
        bind("", "", &[]),
        execute("", 0),
        sync(),
    ]);
    h.replies(&[parse_complete(), bind_complete(), copy_response(b'G')]);
    h.send(&[copy_data("x\n")]);
    let bad = error("22P02", "invalid input syntax for type integer: \"x\"");
    assert!(h.reply(&bad));
    // The client ends its COPY after the server gave up on it; its Sync is owed.
    h.send(&[copy_done(), sync()]);
    assert!(h.reply(&ready(b'I')));
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn copy_out_is_forwarded_to_its_ready() {
    let mut h = Harness::new();
    h.send(&[query("COPY t TO STDOUT")]);
    let replies = [
        copy_response(b'H'),
        copy_data("1\n"),
        copy_data("2\n"),
        copy_done(),
        command_complete("COPY 2"),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&replies), [true; 6]);
    assert_eq!(h.client(), replies);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn an_execute_is_answered_by_portal_suspended_or_empty_query() {
    let mut h = Harness::new();
    h.send(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute("", 1),
        flush(),
    ]);
    let first = [
        parse_complete(),
        bind_complete(),
        data_row(&["1"]),
        portal_suspended(),
    ];
    assert_eq!(h.replies(&first), [true; 4]);
    assert!(h.p.is_empty(), "the suspended Execute is answered");
    h.send(&[
        execute("", 1),
        parse("", ""),
        bind("", "", &[]),
        execute("", 0),
        sync(),
    ]);
    let rest = [
        command_complete("SELECT 0"),
        parse_complete(),
        bind_complete(),
        empty_query(),
        ready(b'I'),
    ];
    assert_eq!(h.replies(&rest), [true; 5]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
}

#[test]
fn asynchronous_messages_pass_through_anywhere() {
    let asyncs = [
        notice("hello"),
        parameter_status("TimeZone", "UTC"),
        notification(7, "ch", "hi"),
    ];
    let mut h = Harness::new();
    // Nothing owed: passed on, nothing resynchronised.
    h.p.push(Expect::Query { ord: 0 });
    h.reply(&ready(b'I'));
    h.p.push(Expect::Query { ord: 0 });
    assert_eq!(h.replies(&asyncs), [true; 3]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, false));
    h.reply(&ready(b'I'));
    // Ahead of a reply the proxy owes, which waits for the server's next real one.
    let name = h.prepare("s1", "SELECT 1");
    h.stmts = ClientStatements::default();
    h.send(&[
        parse("s1", "SELECT 1"),
        bind("", "s1", &[]),
        execute("", 0),
        sync(),
    ]);
    let mut out = BytesMut::new();
    for m in &asyncs {
        assert!(h.p.on_server(m[0], &m[5..], &mut h.prepared, &mut out));
    }
    assert!(out.is_empty());
    assert!(h.prepared.touch(&name));
    assert_eq!(h.replies(&[bind_complete()]), [true]);
    assert_eq!(h.client()[0], parse_complete());
}

#[test]
fn a_function_call_is_answered_by_its_result_or_error_then_ready() {
    let mut h = Harness::new();
    assert_eq!(h.send(&[function_call()]), [function_call()]);
    let replies = [function_call_response("42"), ready(b'I')];
    assert_eq!(h.replies(&replies), [true, true]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, true));
    h.send(&[function_call()]);
    let bad = error("42883", "function 42 does not exist");
    assert_eq!(h.replies(&[bad, ready(b'I')]), [true, true]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}

#[test]
fn completed_advances_only_at_each_requests_ready() {
    let mut h = Harness::new();
    h.send(&[
        query("SELECT 1"),
        parse("", "SELECT 1"),
        bind("", "", &[]),
        flush(),
        execute("", 0),
        sync(),
        function_call(),
        query("SELECT 1"),
    ]);
    assert_eq!(h.p.next_ord(), 5);
    h.replies(&select_one()[..3]);
    assert_eq!(h.p.completed(), 0);
    h.reply(&ready(b'I'));
    assert_eq!(h.p.completed(), 1);
    h.replies(&[
        parse_complete(),
        bind_complete(),
        command_complete("SELECT 1"),
    ]);
    assert_eq!(h.p.completed(), 1);
    h.reply(&ready(b'I'));
    assert_eq!(h.p.completed(), 2);
    h.replies(&[function_call_response("1"), ready(b'I')]);
    assert_eq!(h.p.completed(), 3);
    h.replies(&select_one());
    assert_eq!((h.p.completed(), h.p.is_empty()), (4, true));
}

#[test]
fn a_ready_out_of_step_resynchronises_on_the_first_request_owing_one() {
    let mut h = Harness::new();
    h.p.push(Expect::Bind);
    h.p.push(Expect::Execute);
    h.p.push(Expect::Query { ord: 0 });
    h.p.push(Expect::Query { ord: 0 });
    assert!(h.reply(&ready(b'I')));
    assert_eq!((h.p.completed(), h.p.is_empty()), (1, false));
    h.replies(&select_one());
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
    // With nothing owed at all (here a Sync taken for one sent while copying), every
    // request sent so far counts as done.
    h.p.push(Expect::Execute);
    h.p.client_sync();
    h.replies(&[copy_response(b'G'), command_complete("COPY 0")]);
    assert!(h.p.is_empty());
    assert!(h.reply(&ready(b'I')));
    assert_eq!((h.p.completed(), h.p.is_empty()), (3, true));
}

#[test]
fn discard_all_and_deallocate_all_forget_every_prepared_statement() {
    let mut h = Harness::new();
    h.prepare("s1", "SELECT 1");
    h.prepare("s2", "SELECT 2");
    h.send(&[query("DEALLOCATE s1")]);
    h.replies(&[command_complete("DEALLOCATE"), ready(b'I')]);
    assert_eq!(h.prepared.len(), 2);
    h.send(&[query("DISCARD ALL")]);
    assert!(h.reply(&command_complete("DISCARD ALL")));
    assert!(h.prepared.is_empty());
    h.reply(&ready(b'I'));
    h.prepare("s1", "SELECT 1");
    h.send(&[
        parse("", "DEALLOCATE ALL"),
        bind("", "", &[]),
        execute("", 0),
        sync(),
    ]);
    h.replies(&[
        parse_complete(),
        bind_complete(),
        command_complete("DEALLOCATE ALL"),
    ]);
    assert!(h.prepared.is_empty());
}

#[test]
fn an_error_with_nothing_owed_is_forwarded() {
    let mut h = Harness::new();
    let bye = fatal(
        "57P01",
        "terminating connection due to administrator command",
    );
    assert!(h.reply(&bye));
    assert_eq!(h.client(), [bye]);
    assert_eq!((h.p.completed(), h.p.is_empty()), (0, true));
}

#[test]
fn a_query_pipelined_into_an_unsynced_failed_batch_is_skipped_with_it() {
    let mut h = Harness::new();
    h.send(&[
        parse("", "SELECT $1::int"),
        bind("", "", &["x"]),
        execute("", 0),
        flush(),
        query("SELECT 1"),
        sync(),
    ]);
    h.replies(&[parse_complete(), error("22P02", "invalid input syntax")]);
    // The server skipped the Query too (postgres.c: ignore_till_sync): the one
    // ReadyForQuery is the Sync's.
    h.reply(&ready(b'I'));
    assert_eq!((h.p.completed(), h.p.is_empty()), (2, true));
}
