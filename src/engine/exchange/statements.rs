//! Named prepared statements in transaction pooling: a client's statement names map to
//! server-side names derived from the statement text, prepared on whichever server
//! connection the client lands on, on demand. Unnamed statements pass through.

use super::pipeline::{Expect, Pipeline};
use crate::backend::prepared::PreparedSet;
use crate::protocol::tags::backend::{CLOSE_COMPLETE_TAG, PARSE_COMPLETE_TAG};
use crate::protocol::tags::frontend::{
    BIND_TAG, CLOSE_TAG, COPY_DONE_TAG, COPY_FAIL_TAG, DESCRIBE_TAG, EXECUTE_TAG,
    FUNCTION_CALL_TAG, PARSE_TAG, QUERY_TAG, SYNC_TAG,
};
use crate::protocol::to_server::{self, splice};
use crate::protocol::views::cstr;
use crate::protocol::{walk, Frame};
use crate::router::analysis::Analysis;
use crate::router::parse_cache::ParseCache;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

struct Stmt {
    server_name: Arc<str>,
    analysis: Arc<Analysis>,
    /// The client's Parse, renamed, ready to send to any server.
    parse: Bytes,
}

/// Boxed on the first extended-protocol message: a client that never sends one (or
/// has not yet) carries a pointer, not an empty map, in its idle task.
#[derive(Default)]
pub struct ClientStatements(Option<Box<Statements>>);

#[derive(Default)]
struct Statements {
    map: HashMap<Box<[u8]>, Arc<Stmt>>,
    /// The client's last unnamed statement, replayed when a later Bind lands on a
    /// server connection that did not see its Parse.
    unnamed: Option<Arc<Stmt>>,
    unnamed_ready: bool,
    /// The last unnamed statement a lane ran, with its server name and renamed Parse:
    /// a client sending the same Parse each time (drivers' usual unnamed statements)
    /// reuses them instead of building them again per request.
    lane_renamed: Option<(Arc<Stmt>, Arc<str>, Bytes)>,
}

fn message(tag: u8, parts: &[&[u8]]) -> BytesMut {
    splice(tag, parts, 0)
}

/// A Bind of the unnamed portal to statement `name`, in a buffer with room for the
/// `more` bytes of Describe, Execute and Sync that follow it.
fn bind(name: &[u8], tail: &[u8], more: usize) -> BytesMut {
    splice(BIND_TAG, &[b"\0", name, b"\0", tail], more)
}

fn server_name_for(body_after_name: &[u8]) -> Arc<str> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body_after_name.hash(&mut h);
    format!("pgw_{:016x}", h.finish()).into()
}

/// Sends the Parse for `stmt` if the server lacks it, hiding its ParseComplete.
fn ensure(
    stmt: &Stmt,
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
) {
    if prepared.touch(&stmt.server_name) {
        return;
    }
    add(stmt, prepared, pipeline, to_server, true);
}

fn add(
    stmt: &Stmt,
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
    hide: bool,
) {
    super::auto_prepare::add_statement(stmt.server_name.clone(), prepared, pipeline, to_server);
    to_server.extend_from_slice(&stmt.parse);
    pipeline.push(Expect::Parse {
        name: Some(stmt.server_name.clone()),
        hide,
    });
}

impl ClientStatements {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The analysis of a statement the client prepared ("" is the unnamed one).
    pub fn analysis_of(&self, name: &[u8]) -> Option<Arc<Analysis>> {
        let s = self.0.as_ref()?;
        if name.is_empty() {
            return s.unnamed.as_ref().map(|s| s.analysis.clone());
        }
        s.map.get(name).map(|s| s.analysis.clone())
    }

    /// A new server connection was attached: it does not hold our unnamed statement.
    pub fn attached(&mut self) {
        if let Some(s) = &mut self.0 {
            s.unnamed_ready = false;
        }
    }

    /// Rewrites one client message for the attached server. Malformed messages are
    /// forwarded untouched: the server reports them as PostgreSQL would.
    pub fn rewrite(
        &mut self,
        frame: Frame,
        cache: &ParseCache,
        prepared: &mut PreparedSet,
        pipeline: &mut Pipeline,
        to_server: &mut BytesMut,
    ) -> Option<Arc<Analysis>> {
        if matches!(frame.tag, PARSE_TAG | BIND_TAG | DESCRIBE_TAG | CLOSE_TAG) {
            let s = self.0.get_or_insert_with(Box::default);
            return s.rewrite(frame, cache, prepared, pipeline, to_server);
        }
        match frame.tag {
            EXECUTE_TAG => pipeline.push(Expect::Execute),
            SYNC_TAG => pipeline.client_sync(),
            COPY_DONE_TAG | COPY_FAIL_TAG => pipeline.client_copy_end(),
            QUERY_TAG => pipeline.push(Expect::Query { ord: 0 }),
            FUNCTION_CALL_TAG => pipeline.push(Expect::FunctionCall { ord: 0 }),
            _ => {}
        }
        to_server.unsplit(frame.data);
        None
    }
}

/// An extended-protocol read a shared lane can run: the statement it needs on the
/// lane's server, its messages (statement renamed) up to its Sync, and what it runs.
pub(crate) struct LaneRead {
    pub ensure: (Arc<str>, Bytes),
    pub msgs: BytesMut,
    pub shape: super::kept::Shape,
    pub analysis: Arc<Analysis>,
    /// Names the statement, for the lanes' record of slow ones.
    pub key: u64,
}

impl ClientStatements {
    /// The request as a lane read, when it is exactly `[Parse] Bind [Describe portal]
    /// Execute Sync` on the unnamed portal, of a statement the client prepared or of an
    /// unnamed one parsed in the same request. The unnamed one runs as a named statement
    /// the lane's connection keeps, so PostgreSQL parses it once per connection, not per
    /// request. Anything else (a named Parse, a Describe of a statement, an unknown name)
    /// is served the usual way.
    pub(crate) fn lane_read(&mut self, req: &[u8], cache: &ParseCache) -> Option<LaneRead> {
        let mut msgs = BytesMut::new();
        let mut parsed: Option<Arc<Stmt>> = None;
        // What the Bind runs; its messages are filled in at the Sync.
        let mut read: Option<LaneRead> = None;
        let mut executed = false;
        let mut at = 0;
        for m in walk::messages(req) {
            let (tag, body, frame) = (m.tag, m.body(), m.bytes);
            // What follows this message in the request.
            at += frame.len();
            let rest = &req[at..];
            match tag {
                PARSE_TAG if read.is_none() && parsed.is_none() => {
                    let (name, after) = cstr(body)?;
                    if !name.is_empty() {
                        return None;
                    }
                    // The same Parse as last time was checked and analysed then.
                    let same = self.0.as_ref().and_then(|s| s.unnamed.as_ref());
                    parsed = Some(match same.filter(|u| u.parse[..] == *frame) {
                        Some(u) => u.clone(),
                        None => Arc::new(Stmt {
                            server_name: "".into(),
                            analysis: cache.analyze(std::str::from_utf8(cstr(after)?.0).ok()?),
                            parse: Bytes::copy_from_slice(frame),
                        }),
                    });
                }
                BIND_TAG if read.is_none() => {
                    let (portal, after) = cstr(body)?;
                    let (stmt, tail) = cstr(after)?;
                    if !portal.is_empty() {
                        return None;
                    }
                    read = Some(if stmt.is_empty() {
                        let p = parsed.as_ref()?;
                        let last = self.0.as_ref().and_then(|s| s.lane_renamed.as_ref());
                        let (server_name, parse) = match last.filter(|l| Arc::ptr_eq(&l.0, p)) {
                            Some((_, name, parse)) => (name.clone(), parse.clone()),
                            None => {
                                // Named after its text and parameter types, as a client's
                                // named statements are: the same SQL shares one server
                                // statement.
                                let after_name = &p.parse[6..];
                                let name = server_name_for(after_name);
                                let n = name.as_bytes();
                                (
                                    name.clone(),
                                    message(PARSE_TAG, &[n, b"\0", after_name]).freeze(),
                                )
                            }
                        };
                        msgs = bind(server_name.as_bytes(), tail, rest.len());
                        LaneRead {
                            key: hash(server_name.as_bytes()),
                            ensure: (server_name, parse),
                            msgs: BytesMut::new(),
                            shape: super::kept::Shape::Renamed,
                            analysis: p.analysis.clone(),
                        }
                    } else {
                        let s = self.0.as_ref()?.map.get(stmt)?;
                        msgs = bind(s.server_name.as_bytes(), tail, rest.len());
                        LaneRead {
                            ensure: (s.server_name.clone(), s.parse.clone()),
                            msgs: BytesMut::new(),
                            shape: super::kept::Shape::AsSent,
                            analysis: s.analysis.clone(),
                            key: hash(s.server_name.as_bytes()),
                        }
                    });
                }
                DESCRIBE_TAG if read.is_some() && !executed && body == b"P\0" => {
                    msgs.extend_from_slice(frame);
                }
                EXECUTE_TAG if read.is_some() && !executed && cstr(body)?.0.is_empty() => {
                    executed = true;
                    msgs.extend_from_slice(frame);
                }
                SYNC_TAG if executed && rest.is_empty() => {
                    let mut read = read?;
                    read.msgs = msgs;
                    if let Some(p) = parsed {
                        // The client's unnamed statement, for a later Bind that lands on
                        // a server connection without it.
                        let s = self.0.get_or_insert_with(Box::default);
                        if read.shape == super::kept::Shape::Renamed {
                            let (name, parse) = &read.ensure;
                            s.lane_renamed = Some((p.clone(), name.clone(), parse.clone()));
                        }
                        s.unnamed = Some(p);
                        s.unnamed_ready = false;
                    }
                    return Some(read);
                }
                _ => return None,
            }
        }
        None
    }
}

fn hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Statements {
    /// Re-sends the unnamed statement when the attached server has not seen it.
    fn ensure_unnamed(&mut self, pipeline: &mut Pipeline, to_server: &mut BytesMut) {
        if self.unnamed_ready {
            return;
        }
        if let Some(stmt) = &self.unnamed {
            to_server.extend_from_slice(&stmt.parse);
            pipeline.push(Expect::Parse {
                name: None,
                hide: true,
            });
            self.unnamed_ready = true;
        }
    }

    fn rewrite(
        &mut self,
        frame: Frame,
        cache: &ParseCache,
        prepared: &mut PreparedSet,
        pipeline: &mut Pipeline,
        to_server: &mut BytesMut,
    ) -> Option<Arc<Analysis>> {
        let body = frame.body();
        match frame.tag {
            PARSE_TAG => {
                if let Some((name, rest)) = cstr(body) {
                    let sql = cstr(rest)
                        .and_then(|(q, _)| std::str::from_utf8(q).ok())
                        .unwrap_or("");
                    let analysis = cache.analyze(sql);
                    if name.is_empty() {
                        let parse = frame.data.freeze();
                        to_server.extend_from_slice(&parse);
                        self.unnamed = Some(Arc::new(Stmt {
                            server_name: "".into(),
                            analysis: analysis.clone(),
                            parse,
                        }));
                        self.unnamed_ready = true;
                        pipeline.push(Expect::Parse {
                            name: None,
                            hide: false,
                        });
                        return Some(analysis);
                    }
                    let server_name = server_name_for(rest);
                    let mut n = server_name.as_bytes().to_vec();
                    n.push(0);
                    let stmt = Arc::new(Stmt {
                        parse: message(PARSE_TAG, &[&n, rest]).freeze(),
                        server_name,
                        analysis: analysis.clone(),
                    });
                    self.map.insert(name.into(), stmt.clone());
                    if prepared.touch(&stmt.server_name) {
                        pipeline.push(Expect::Inject(PARSE_COMPLETE_TAG));
                    } else {
                        add(&stmt, prepared, pipeline, to_server, false);
                    }
                    return Some(analysis);
                }
                pipeline.push(Expect::Parse {
                    name: None,
                    hide: false,
                });
            }
            BIND_TAG => {
                let target = cstr(body).and_then(|(portal, rest)| {
                    let (stmt, tail) = cstr(rest)?;
                    Some((portal, stmt, tail))
                });
                match target {
                    Some((portal, stmt, tail)) if !stmt.is_empty() => {
                        if let Some(stmt) = self.map.get(stmt).cloned() {
                            ensure(&stmt, prepared, pipeline, to_server);
                            pipeline.push(Expect::Bind);
                            let mut p = portal.to_vec();
                            p.push(0);
                            let mut n = stmt.server_name.as_bytes().to_vec();
                            n.push(0);
                            to_server.unsplit(message(BIND_TAG, &[&p, &n, tail]));
                            return None;
                        }
                    }
                    Some(_) => self.ensure_unnamed(pipeline, to_server),
                    None => {}
                }
                pipeline.push(Expect::Bind);
            }
            DESCRIBE_TAG => match body.split_first() {
                Some((b'S', rest)) => {
                    let name = cstr(rest).map(|(n, _)| n).unwrap_or_default();
                    if name.is_empty() {
                        self.ensure_unnamed(pipeline, to_server);
                    } else if let Some(stmt) = self.map.get(name).cloned() {
                        ensure(&stmt, prepared, pipeline, to_server);
                        let mut n = vec![b'S'];
                        n.extend_from_slice(stmt.server_name.as_bytes());
                        n.push(0);
                        to_server.unsplit(message(DESCRIBE_TAG, &[&n]));
                        pipeline.push(Expect::DescribeStatement);
                        return None;
                    }
                    pipeline.push(Expect::DescribeStatement);
                }
                _ => pipeline.push(Expect::DescribePortal),
            },
            CLOSE_TAG => {
                if let Some((b'S', rest)) = body.split_first() {
                    if let Some((name, _)) = cstr(rest) {
                        if !name.is_empty() {
                            // The server keeps its copy for other clients; the client
                            // gets its CloseComplete as if it had been closed.
                            self.map.remove(name);
                            pipeline.push(Expect::Inject(CLOSE_COMPLETE_TAG));
                            return None;
                        }
                    }
                }
                pipeline.push(Expect::Close { hide: false });
            }
            _ => {}
        }
        to_server.unsplit(frame.data);
        None
    }
}

/// Sends `read`, the client's `request` on its unnamed statement, as Bind [Describe]
/// Execute Sync of the server statement named after its text, preparing it first if
/// this server connection lacks it. The same statement serves every client that sends
/// that text, and the lanes.
pub(crate) fn send_renamed(
    read: LaneRead,
    request: Bytes,
    prepared: &mut PreparedSet,
    pipeline: &mut Pipeline,
    to_server: &mut BytesMut,
) {
    let (name, parse) = read.ensure;
    let parse_pending = !prepared.touch(&name);
    if parse_pending {
        super::auto_prepare::add_statement(name.clone(), prepared, pipeline, to_server);
        to_server.extend_from_slice(&parse);
    }
    to_server.extend_from_slice(&read.msgs);
    to_server::sync(to_server);
    pipeline.push(Expect::Renamed {
        ord: 0,
        name,
        request,
        parse_pending,
        parsed: !parse_pending,
        bound: false,
        failed: None,
    });
}
