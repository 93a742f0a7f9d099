//! Named prepared statements in transaction pooling: a client's statement names map to
//! server-side names derived from the statement text, prepared on whichever server
//! connection the client lands on, on demand. Unnamed statements pass through.

use super::pipeline::{Expect, Pipeline};
use crate::backend::prepared::PreparedSet;
use crate::protocol::Frame;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

struct Stmt {
    server_name: Arc<str>,
    /// The client's Parse, renamed, ready to send to any server.
    parse: Bytes,
}

#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Arc<Stmt>>,
}

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

fn message(tag: u8, parts: &[&[u8]]) -> BytesMut {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut m = BytesMut::with_capacity(len + 1);
    m.put_u8(tag);
    m.put_u32(len as u32);
    for p in parts {
        m.put_slice(p);
    }
    m
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
    if let Some(evicted) = prepared.insert(stmt.server_name.clone()) {
        let mut body = vec![b'S'];
        body.extend_from_slice(evicted.as_bytes());
        body.push(0);
        to_server.unsplit(message(b'C', &[&body]));
        pipeline.push(Expect::Close { hide: true });
    }
    to_server.extend_from_slice(&stmt.parse);
    pipeline.push(Expect::Parse {
        name: Some(stmt.server_name.clone()),
        hide,
    });
}

impl ClientStatements {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Rewrites one client message for the attached server. Malformed messages are
    /// forwarded untouched: the server reports them as PostgreSQL would.
    pub fn rewrite(
        &mut self,
        frame: Frame,
        prepared: &mut PreparedSet,
        pipeline: &mut Pipeline,
        to_server: &mut BytesMut,
    ) {
        let body = frame.body();
        match frame.tag {
            b'P' => {
                if let Some((name, rest)) = cstr(body) {
                    if !name.is_empty() {
                        let server_name = server_name_for(rest);
                        let mut n = server_name.as_bytes().to_vec();
                        n.push(0);
                        let stmt = Arc::new(Stmt {
                            parse: message(b'P', &[&n, rest]).freeze(),
                            server_name,
                        });
                        self.map.insert(name.into(), stmt.clone());
                        if prepared.touch(&stmt.server_name) {
                            pipeline.push(Expect::Inject(b'1'));
                        } else {
                            add(&stmt, prepared, pipeline, to_server, false);
                        }
                        return;
                    }
                }
                pipeline.push(Expect::Parse {
                    name: None,
                    hide: false,
                });
            }
            b'B' => {
                let named = cstr(body).and_then(|(portal, rest)| {
                    let (stmt, tail) = cstr(rest)?;
                    Some((portal, self.map.get(stmt)?.clone(), tail))
                });
                if let Some((portal, stmt, tail)) = named {
                    ensure(&stmt, prepared, pipeline, to_server);
                    pipeline.push(Expect::Bind);
                    let mut p = portal.to_vec();
                    p.push(0);
                    let mut n = stmt.server_name.as_bytes().to_vec();
                    n.push(0);
                    to_server.unsplit(message(b'B', &[&p, &n, tail]));
                    return;
                }
                pipeline.push(Expect::Bind);
            }
            b'D' => match body.split_first() {
                Some((b'S', rest)) => {
                    if let Some(stmt) = cstr(rest).and_then(|(n, _)| self.map.get(n)).cloned() {
                        ensure(&stmt, prepared, pipeline, to_server);
                        let mut n = vec![b'S'];
                        n.extend_from_slice(stmt.server_name.as_bytes());
                        n.push(0);
                        to_server.unsplit(message(b'D', &[&n]));
                        pipeline.push(Expect::DescribeStatement);
                        return;
                    }
                    pipeline.push(Expect::DescribeStatement);
                }
                _ => pipeline.push(Expect::DescribePortal),
            },
            b'C' => {
                if let Some((b'S', rest)) = body.split_first() {
                    if let Some((name, _)) = cstr(rest) {
                        if !name.is_empty() {
                            // The server keeps its copy for other clients; the client
                            // gets its CloseComplete as if it had been closed.
                            self.map.remove(name);
                            pipeline.push(Expect::Inject(b'3'));
                            return;
                        }
                    }
                }
                pipeline.push(Expect::Close { hide: false });
            }
            b'E' => pipeline.push(Expect::Execute),
            b'S' => pipeline.push(Expect::Sync),
            b'Q' => pipeline.push(Expect::Query),
            b'F' => pipeline.push(Expect::FunctionCall),
            _ => {}
        }
        to_server.unsplit(frame.data);
    }
}
