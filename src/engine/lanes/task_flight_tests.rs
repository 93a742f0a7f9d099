//! A lane's flights fed byte fixtures: what the lane writes for a read, what of the
//! server's replies reaches the client, and when the read goes back to its session.

use super::*;
use crate::engine::exchange::fixtures::*;
use crate::router::parameterize::parameterize;

const READ: &str = "select v from t where id = 57203";

fn lifted_request() -> (LaneRequest, oneshot::Receiver<LaneReply>) {
    let lifted = parameterize(READ).expect("liftable");
    let key = kept::id_of(&lifted);
    let name = kept::name(key);
    let mut msgs = BytesMut::new();
    let body = cstr(READ);
    auto_prepare::put_execute(&name, &lifted, &body, &mut msgs);
    let (tx, rx) = oneshot::channel();
    let req = LaneRequest {
        ensure: Ensure::Lifted { name, lifted },
        msgs,
        shape: Shape::Lifted,
        key,
        reply: Some(tx),
    };
    (req, rx)
}

fn renamed_request(name: &str) -> (LaneRequest, oneshot::Receiver<LaneReply>) {
    let (tx, rx) = oneshot::channel();
    let req = LaneRequest {
        ensure: Ensure::Named {
            name: name.into(),
            parse: parse(name, "select v from t where id = $1").into(),
        },
        msgs: BytesMut::from(
            &[bind("", name, &["5"]), describe(b'P', ""), execute("", 0)].concat()[..],
        ),
        shape: Shape::Renamed,
        key: 7,
        reply: Some(tx),
    };
    (req, rx)
}

/// A lane's server connection as the flights see it: what it has prepared, the stale
/// statements to close, and what is written to it.
struct Conn {
    prepared: PreparedSet,
    stale: Vec<Arc<str>>,
    to_server: BytesMut,
}

impl Conn {
    fn new(capacity: usize) -> Conn {
        Conn {
            prepared: PreparedSet::new(capacity),
            stale: Vec::new(),
            to_server: BytesMut::new(),
        }
    }

    fn write(&mut self, req: LaneRequest) -> Flight {
        write(
            req,
            &mut self.prepared,
            &mut self.stale,
            &mut self.to_server,
        )
    }

    /// Feeds `replies` to the flight as the lane does: ReadyForQuery ends it.
    fn answer(&mut self, f: &mut Flight, replies: &[Vec<u8>]) {
        for m in replies {
            on_server(
                f,
                m[0],
                BytesMut::from(&m[..]),
                &mut self.prepared,
                &mut self.stale,
            );
        }
    }
}

fn finished(f: Flight, rx: &mut oneshot::Receiver<LaneReply>) -> Option<Vec<Vec<u8>>> {
    let lanes = Lanes::new(Duration::from_millis(20));
    finish(&lanes, f, BytesMut::from(&ready(b'I')[..]));
    match rx.try_recv().expect("a reply") {
        LaneReply::Done(out) => Some(msgs(&out)),
        LaneReply::FallBack => None,
    }
}

fn tags(b: &[u8]) -> Vec<u8> {
    msgs(b).iter().map(|m| m[0]).collect()
}

#[test]
fn a_lifted_read_prepares_its_statement_once_and_the_client_sees_the_simple_reply() {
    let mut c = Conn::new(16);
    let (req, mut rx) = lifted_request();
    let mut f = c.write(req);
    assert_eq!(tags(&c.to_server), b"PBDES");
    let rows = [
        row_description(&["v"]),
        data_row(&["7"]),
        command_complete("SELECT 1"),
    ];
    c.answer(
        &mut f,
        &[vec![parse_complete(), bind_complete()], rows.to_vec()].concat(),
    );
    assert_eq!(
        finished(f, &mut rx).expect("served"),
        [rows.to_vec(), vec![ready(b'I')]].concat()
    );
    // The connection keeps the statement: the next read binds it at once.
    c.to_server.clear();
    let (req, _rx) = lifted_request();
    c.write(req);
    assert_eq!(tags(&c.to_server), b"BDES");
}

#[test]
fn a_lifted_read_whose_statement_went_stale_goes_back_and_the_statement_is_closed_next() {
    let mut c = Conn::new(16);
    let (req, _rx) = lifted_request();
    let name = match &req.ensure {
        Ensure::Lifted { name, .. } => name.to_string(),
        Ensure::Named { .. } => unreachable!(),
    };
    let mut f = c.write(req);
    c.answer(&mut f, &[parse_complete()]);
    drop(f);
    // The next read, after DDL: the kept statement fails before it binds.
    let (req, mut rx) = lifted_request();
    let mut f = c.write(req);
    c.answer(
        &mut f,
        &[error("0A000", "cached plan must not change result type")],
    );
    assert!(
        finished(f, &mut rx).is_none(),
        "its session runs it as sent"
    );
    assert_eq!(
        c.stale.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        std::slice::from_ref(&name)
    );
    // Written with the next read: the Close (its CloseComplete hidden), then the Parse.
    c.to_server.clear();
    let (req, mut rx) = lifted_request();
    let mut f = c.write(req);
    assert_eq!(tags(&c.to_server), b"CPBDES");
    assert_eq!(msgs(&c.to_server)[0], close(b'S', &name));
    let rows = [
        row_description(&["v"]),
        data_row(&["8"]),
        command_complete("SELECT 1"),
    ];
    c.answer(
        &mut f,
        &[
            vec![close_complete(), parse_complete(), bind_complete()],
            rows.to_vec(),
        ]
        .concat(),
    );
    assert_eq!(
        finished(f, &mut rx).expect("served"),
        [rows.to_vec(), vec![ready(b'I')]].concat()
    );
}

#[test]
fn an_error_after_the_bind_is_the_clients_own() {
    let mut c = Conn::new(16);
    let (req, mut rx) = lifted_request();
    let mut f = c.write(req);
    let err = error("22012", "division by zero");
    c.answer(
        &mut f,
        &[
            parse_complete(),
            bind_complete(),
            row_description(&["v"]),
            err.clone(),
        ],
    );
    assert_eq!(
        finished(f, &mut rx).expect("served"),
        [row_description(&["v"]), err, ready(b'I')]
    );
    assert!(c.stale.is_empty());
}

#[test]
fn a_renamed_read_gets_the_parse_complete_of_the_unnamed_statement_it_sent() {
    let mut c = Conn::new(16);
    let (req, mut rx) = renamed_request("pgw_1");
    let mut f = c.write(req);
    assert_eq!(tags(&c.to_server), b"PBDES");
    let replies = [
        bind_complete(),
        row_description(&["v"]),
        data_row(&["7"]),
        command_complete("SELECT 1"),
    ];
    c.answer(&mut f, &[vec![parse_complete()], replies.to_vec()].concat());
    assert_eq!(
        finished(f, &mut rx).expect("served"),
        [vec![parse_complete()], replies.to_vec(), vec![ready(b'I')]].concat()
    );
}

#[test]
fn a_failed_lane_parse_forgets_the_statement_and_the_read_goes_back() {
    let mut c = Conn::new(16);
    let (req, mut rx) = renamed_request("pgw_2");
    let mut f = c.write(req);
    c.answer(&mut f, &[error("42P01", "relation \"t\" does not exist")]);
    assert!(finished(f, &mut rx).is_none());
    assert!(!c.prepared.touch("pgw_2"), "never created");
    assert!(c.stale.is_empty(), "nothing to close");
}

#[test]
fn a_statement_evicted_for_room_is_closed_and_its_close_complete_hidden() {
    let mut c = Conn::new(1);
    let (req, _rx) = renamed_request("pgw_a");
    c.write(req);
    c.to_server.clear();
    let (req, mut rx) = renamed_request("pgw_b");
    let mut f = c.write(req);
    assert_eq!(tags(&c.to_server), b"CPBDES");
    assert_eq!(msgs(&c.to_server)[0], close(b'S', "pgw_a"));
    let replies = [bind_complete(), command_complete("SELECT 0")];
    c.answer(
        &mut f,
        &[vec![close_complete(), parse_complete()], replies.to_vec()].concat(),
    );
    assert_eq!(
        finished(f, &mut rx).expect("served"),
        [vec![parse_complete()], replies.to_vec(), vec![ready(b'I')]].concat()
    );
}

#[test]
fn a_reply_too_large_to_hold_goes_back_to_be_streamed() {
    let mut c = Conn::new(16);
    let (req, mut rx) = lifted_request();
    let mut f = c.write(req);
    c.answer(
        &mut f,
        &[parse_complete(), bind_complete(), row_description(&["v"])],
    );
    let big = data_row(&[&"x".repeat(MAX_REPLY)]);
    c.answer(&mut f, &[big]);
    assert!(f.too_big && f.fall_back);
    assert!(finished(f, &mut rx).is_none());
}
