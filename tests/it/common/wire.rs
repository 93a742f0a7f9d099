//! A minimal frontend on a raw socket ([`Wire`]), the backend messages it reads ([`Msg`])
//! and the frontend messages it sends ([`fe`]): for the cases a driver hides.

use std::time::Duration;

/// One backend message as it came off the wire.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse or NoticeResponse ('C' = SQLSTATE, 'M' = message).
    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    pub fn sqlstate(&self) -> Option<String> {
        if self.tag == b'E' {
            self.field(b'C')
        } else {
            None
        }
    }

    /// The tag of a CommandComplete ("INSERT 0 2", "SELECT 3", ...).
    pub fn command_tag(&self) -> Option<String> {
        (self.tag == b'C').then(|| cstr_at(&self.body, 0).0)
    }

    /// Name and value of a ParameterStatus.
    pub fn parameter(&self) -> Option<(String, String)> {
        if self.tag != b'S' {
            return None;
        }
        let (name, next) = cstr_at(&self.body, 0);
        Some((name, cstr_at(&self.body, next).0))
    }

    /// The columns of a DataRow (None for NULL).
    pub fn data_row(&self) -> Option<Vec<Option<Vec<u8>>>> {
        if self.tag != b'D' {
            return None;
        }
        let b = &self.body;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4;
            if len < 0 {
                cols.push(None);
            } else {
                cols.push(Some(b[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        Some(cols)
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        match self.tag {
            b'E' | b'N' => format!(
                "{}({}: {})",
                self.tag as char,
                self.field(b'C').unwrap_or_default(),
                self.field(b'M').unwrap_or_default()
            ),
            b'C' => format!("C({})", self.command_tag().unwrap_or_default()),
            b'Z' => format!(
                "Z({})",
                self.body.first().map(|&b| b as char).unwrap_or('?')
            ),
            t => format!("{}", t as char),
        }
    }
}

fn cstr_at(b: &[u8], at: usize) -> (String, usize) {
    let end = b[at..]
        .iter()
        .position(|&c| c == 0)
        .map(|p| at + p)
        .unwrap_or(b.len());
    (String::from_utf8_lossy(&b[at..end]).into_owned(), end + 1)
}

/// Frontend message encoders for [`Wire`].
pub mod fe {
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(body.len() + 5);
        m.push(tag);
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        msg(b'Q', &b)
    }

    /// Parse with no declared parameter types.
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'P', &b)
    }

    /// Bind with text-format parameters and text-format results.
    pub fn bind(portal: &str, statement: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, statement);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'B', &b)
    }

    pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&max_rows.to_be_bytes());
        msg(b'E', &b)
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    pub fn describe_portal(name: &str) -> Vec<u8> {
        let mut b = vec![b'P'];
        cstr(&mut b, name);
        msg(b'D', &b)
    }

    pub fn describe_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        msg(b'D', &b)
    }

    pub fn close_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        msg(b'C', &b)
    }

    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        msg(b'd', data)
    }

    pub fn copy_done() -> Vec<u8> {
        msg(b'c', &[])
    }
}

/// How long [`Wire::recv`] waits for one message before the test fails.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A minimal frontend that speaks the wire protocol directly, for the cases a driver
/// hides: exact command tags, ParameterStatus, COPY byte streams, hand-built sequences.
pub struct Wire {
    stream: tokio::net::TcpStream,
    rbuf: bytes::BytesMut,
    /// Everything the server sent during login after authentication, up to and
    /// including the first ReadyForQuery.
    pub login: Vec<Msg>,
}

impl Wire {
    /// Logs in (SCRAM-SHA-256, md5 or cleartext, whichever is asked) with the extra
    /// startup parameters given.
    pub async fn connect(
        port: u16,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> Wire {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp connect to the proxy");
        let mut w = Wire {
            stream,
            rbuf: bytes::BytesMut::new(),
            login: Vec::new(),
        };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", db)].iter().chain(extra) {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        w.send(&packet).await;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = w.recv().await;
            match m.tag {
                b'R' => {
                    let code = u32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                    let mut reply = Vec::new();
                    match code {
                        0 => continue,
                        3 => {
                            reply.extend_from_slice(password.as_bytes());
                            reply.push(0);
                        }
                        5 => {
                            let salt = [m.body[4], m.body[5], m.body[6], m.body[7]];
                            let h = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            reply.extend_from_slice(h.as_bytes());
                            reply.push(0);
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            reply.extend_from_slice(b"SCRAM-SHA-256\0");
                            reply.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            reply.extend_from_slice(s.message());
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASLContinue after SASL");
                            s.update(&m.body[4..]).expect("SCRAM server-first");
                            reply.extend_from_slice(s.message());
                        }
                        12 => {
                            let s = scram.as_mut().expect("SASLFinal after SASL");
                            s.finish(&m.body[4..]).expect("SCRAM server signature");
                            continue;
                        }
                        other => panic!("unsupported authentication request {other}"),
                    }
                    let mut p = vec![b'p'];
                    p.extend_from_slice(&((reply.len() + 4) as u32).to_be_bytes());
                    p.extend_from_slice(&reply);
                    w.send(&p).await;
                }
                b'E' => panic!("login failed: {}", m.describe()),
                b'Z' => {
                    w.login.push(m);
                    return w;
                }
                _ => w.login.push(m),
            }
        }
    }

    /// ParameterStatus values from the login, by name.
    pub fn login_parameter(&self, name: &str) -> Option<String> {
        self.login
            .iter()
            .filter_map(Msg::parameter)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the proxy");
    }

    /// The next message; None when the peer closed the connection.
    pub async fn try_recv(&mut self) -> Option<Msg> {
        use tokio::io::AsyncReadExt;
        let read = async {
            loop {
                if self.rbuf.len() >= 5 {
                    let len = u32::from_be_bytes([
                        self.rbuf[1],
                        self.rbuf[2],
                        self.rbuf[3],
                        self.rbuf[4],
                    ]) as usize;
                    if self.rbuf.len() > len {
                        let data = self.rbuf.split_to(len + 1);
                        return Some(Msg {
                            tag: data[0],
                            body: data[5..].to_vec(),
                        });
                    }
                }
                self.rbuf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(WIRE_TIMEOUT, read)
            .await
            .expect("no message from the proxy within WIRE_TIMEOUT")
    }

    pub async fn recv(&mut self) -> Msg {
        self.try_recv()
            .await
            .expect("the proxy closed the connection")
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Sends a simple Query and returns everything up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&fe::query(sql)).await;
        self.until_ready().await
    }
}

/// Runs a simple Query that must return exactly one row, and returns that row.
pub async fn one_row(w: &mut Wire, sql: &str) -> Vec<Option<Vec<u8>>> {
    let r = w.simple(sql).await;
    assert_eq!(describe_all(&r), "T D C(SELECT 1) Z(I)", "{sql}");
    r.iter().find_map(Msg::data_row).expect("a DataRow")
}

/// Tags of a message sequence, e.g. "T D D C Z(I)", for assertion messages.
pub fn describe_all(msgs: &[Msg]) -> String {
    msgs.iter().map(Msg::describe).collect::<Vec<_>>().join(" ")
}
