//! One server connection: TCP (+ optional TLS) or Unix-socket connect, startup, authentication,
//! and the small internal queries the proxy runs itself (ping, reset, SET).

use super::prepared::PreparedSet;
use super::socket::{unix_socket_path, ServerAddr};
use crate::config::ServerTlsMode;
use crate::protocol::{to_server, views, Frame, FrameError, FramedStream, Stream};
use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::Message;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Servers may send messages up to 1 GiB (PostgreSQL's own limit).
const SERVER_MAX_MESSAGE: usize = 0x3fff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("server connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server {
        code: String,
        message: String,
        /// The ErrorResponse as the server sent it, to forward to the client.
        raw: BytesMut,
    },
    #[error("server protocol: {0}")]
    Protocol(String),
    #[error("server TLS required but refused by {0}")]
    TlsRefused(String),
    #[error("timed out connecting to {0}")]
    Timeout(String),
}

impl From<FrameError> for BackendError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => BackendError::Io(e),
            other => BackendError::Protocol(other.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct ConnectSpec {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub tls: ServerTlsMode,
    pub connect_timeout: Duration,
    /// Named statements kept prepared per connection.
    pub prepared_capacity: usize,
    /// Shown in pg_stat_activity, so operators tell pooled and monitor connections apart.
    pub application_name: &'static str,
}

pub struct ServerConn {
    pub io: FramedStream,
    pub node: String,
    pub addr: ServerAddr,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values, kept current from what the server reports.
    pub params: Vec<(String, String)>,
    /// Client startup parameters last applied with SET on this connection.
    pub applied: Vec<(String, String)>,
    pub last_used: Instant,
    /// Set when the connection's state is unknown; the pool then discards it.
    pub broken: bool,
    /// Statements prepared on this connection by the proxy on clients' behalf.
    pub prepared: PreparedSet,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        metrics::gauge!("pgwarden_server_connections", "node" => self.node.clone()).decrement(1.0);
    }
}

pub async fn connect(spec: &ConnectSpec) -> Result<ServerConn, BackendError> {
    tokio::time::timeout(spec.connect_timeout, connect_inner(spec))
        .await
        .map_err(|_| BackendError::Timeout(target(spec)))?
}

fn target(spec: &ConnectSpec) -> String {
    match unix_socket_path(&spec.host, spec.port) {
        Some(path) => path.display().to_string(),
        None => format!("{}:{}", spec.host, spec.port),
    }
}

async fn connect_inner(spec: &ConnectSpec) -> Result<ServerConn, BackendError> {
    let (stream, addr) = match unix_socket_path(&spec.host, spec.port) {
        Some(path) => open_unix(path).await?,
        None => open_tcp(spec).await?,
    };
    let mut io = FramedStream::new(stream, SERVER_MAX_MESSAGE);
    let mut startup = Startup::new();
    startup.parameters.insert("user".into(), spec.user.clone());
    startup
        .parameters
        .insert("database".into(), spec.database.clone());
    startup
        .parameters
        .insert("application_name".into(), spec.application_name.into());
    let mut buf = BytesMut::new();
    startup
        .encode(&mut buf)
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
    io.write_all(&buf).await?;
    io.flush().await?;

    let mut conn = ServerConn {
        io,
        node: spec.node.clone(),
        addr,
        pid: 0,
        secret: 0,
        params: Vec::new(),
        applied: Vec::new(),
        last_used: Instant::now(),
        broken: false,
        prepared: PreparedSet::new(spec.prepared_capacity),
    };
    metrics::gauge!("pgwarden_server_connections", "node" => spec.node.clone()).increment(1.0);
    let mut scram = None;
    loop {
        let frame = conn.read().await?;
        match frame.tag {
            b'R' => {
                super::auth::step(
                    &mut conn.io,
                    frame.data,
                    &spec.user,
                    &spec.password,
                    &mut scram,
                )
                .await?;
            }
            b'E' => return Err(server_error(frame)),
            b'S' => conn.note_parameter(frame.body()),
            b'K' => {
                let mut b = frame.body();
                if b.len() >= 8 {
                    conn.pid = b.get_i32();
                    conn.secret = b.get_i32();
                }
            }
            b'Z' => return Ok(conn),
            b'N' | b'v' => {}
            t => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    t as char
                )))
            }
        }
    }
}

/// TCP to `spec`'s host, with the TLS `spec.tls` asks for.
async fn open_tcp(spec: &ConnectSpec) -> Result<(Stream, ServerAddr), BackendError> {
    let mut tcp = TcpStream::connect((spec.host.as_str(), spec.port)).await?;
    tcp.set_nodelay(true)?;
    let addr = tcp.peer_addr()?;
    let stream = match spec.tls {
        ServerTlsMode::Disable => Stream::Plain(tcp),
        mode => {
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
            let answer = tcp.read_u8().await?;
            match (answer, mode) {
                (b'S', _) => {
                    let name = rustls::pki_types::ServerName::try_from(spec.host.clone())
                        .unwrap_or_else(|_| "localhost".try_into().expect("valid name"));
                    let tls = super::tls::connector().connect(name, tcp).await?;
                    Stream::ClientTls(Box::new(tls))
                }
                (_, ServerTlsMode::Require) => {
                    return Err(BackendError::TlsRefused(spec.node.clone()))
                }
                _ => Stream::Plain(tcp),
            }
        }
    };
    Ok((stream, ServerAddr::Tcp(addr)))
}

/// A server on this host through its Unix-domain socket: no TCP stack on either side, so
/// each request and reply costs the kernel less than loopback TCP (see README,
/// Benchmarks). PostgreSQL offers no TLS there; config refuses `server_tls: require` with
/// a socket directory.
async fn open_unix(path: PathBuf) -> Result<(Stream, ServerAddr), BackendError> {
    match UnixStream::connect(&path).await {
        Ok(unix) => Ok((Stream::Unix(unix), ServerAddr::Unix(path.into()))),
        Err(e) => Err(BackendError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))),
    }
}

pub(crate) fn server_error(frame: Frame) -> BackendError {
    let (code, message) = views::error_fields(frame.body());
    BackendError::Server {
        code,
        message,
        raw: frame.data,
    }
}

/// Splits a ParameterStatus body into name and value.
pub fn parse_parameter(body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|&b| b == 0);
    let name = parts.next()?;
    let value = parts.next()?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Records the ParameterStatus `body` in `params`.
pub fn note_parameter(params: &mut Vec<(String, String)>, body: &[u8]) {
    if let Some((name, value)) = parse_parameter(body) {
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => params.push((name, value)),
        }
    }
}

impl ServerConn {
    pub async fn read(&mut self) -> Result<Frame, BackendError> {
        match self.io.read_frame().await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => {
                self.broken = true;
                Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            }
            Err(e) => {
                self.broken = true;
                Err(e.into())
            }
        }
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, body: &[u8]) {
        note_parameter(&mut self.params, body);
    }

    /// Runs SQL the proxy issues itself and waits for ReadyForQuery. Returns the
    /// ParameterStatus messages it caused, raw, so a caller can pass them on.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Vec<Frame>, BackendError> {
        self.exchange(sql).await.map(|(reported, _)| reported)
    }

    /// Runs a query of the proxy's own and returns its first row as text.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, BackendError> {
        Ok(self
            .query_rows(sql)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Runs a query of the proxy's own and returns its rows as text.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.exchange(sql).await.map(|(_, rows)| rows)
    }

    /// Runs a query of the proxy's own that it runs often (commit positions, replay
    /// probes) as a statement this connection keeps prepared under `name`: the server
    /// parses and plans it once per connection instead of once per call, which on a
    /// write-heavy load is a sizeable share of the primary's CPU for these queries.
    /// Returns its first row as text.
    pub async fn query_row_prepared(
        &mut self,
        name: &str,
        sql: &str,
    ) -> Result<Vec<Option<String>>, BackendError> {
        let mut prepare = !self.prepared.touch(name);
        loop {
            let mut buf = BytesMut::new();
            if prepare {
                if let Some(evicted) = self.prepared.insert(name.into()) {
                    to_server::close_statement(&mut buf, &evicted);
                }
                // Whatever an earlier failed attempt left under this name goes first.
                to_server::close_statement(&mut buf, name);
                to_server::parse(&mut buf, name, sql, &[]);
            }
            to_server::execute_statement(&mut buf, name);
            match self.exchange_buf(buf).await {
                Ok((_, rows)) => return Ok(rows.into_iter().next().unwrap_or_default()),
                // Deallocated behind the proxy's back (DEALLOCATE in a function, say):
                // prepared again, once.
                Err(BackendError::Server { code, .. })
                    if code == "26000" && !prepare && !self.broken =>
                {
                    prepare = true;
                }
                Err(e) => {
                    // Not known to exist any more: the next call prepares it again.
                    self.prepared.remove(name);
                    return Err(e);
                }
            }
        }
    }

    /// One simple-query round trip of the proxy's own: the ParameterStatus messages
    /// it caused and its rows. A broken exchange marks the connection broken.
    async fn exchange(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<Frame>, Vec<Vec<Option<String>>>), BackendError> {
        let mut buf = BytesMut::new();
        to_server::query(&mut buf, sql);
        self.exchange_buf(buf).await
    }

    /// Writes `buf` (messages ending with one Query or one Sync) and reads up to the
    /// ReadyForQuery that answers it.
    async fn exchange_buf(
        &mut self,
        buf: BytesMut,
    ) -> Result<(Vec<Frame>, Vec<Vec<Option<String>>>), BackendError> {
        let res = async {
            self.io.write_all(&buf).await?;
            self.io.flush().await?;
            let mut reported = Vec::new();
            let mut rows = Vec::new();
            let mut error = None;
            loop {
                let frame = self.read().await?;
                match frame.tag {
                    b'Z' => break,
                    b'E' => error = Some(server_error(frame)),
                    b'D' => rows.push(parse_data_row(frame.body())),
                    b'S' => {
                        self.note_parameter(frame.body());
                        reported.push(frame);
                    }
                    // CopyIn/CopyOut cannot come from the proxy's own statements.
                    b'G' | b'H' | b'W' => {
                        return Err(BackendError::Protocol("unexpected COPY".into()))
                    }
                    _ => {}
                }
            }
            match error {
                Some(e) => Err(e),
                None => Ok((reported, rows)),
            }
        }
        .await;
        if matches!(res, Err(BackendError::Io(_) | BackendError::Protocol(_))) {
            self.broken = true;
        }
        res
    }

    /// True if the server sent something unprompted (an error, or closed): such a
    /// connection is not handed out again.
    pub async fn has_unexpected_input(&mut self) -> bool {
        // Polled exactly once: a zero timeout would round up to tokio's 1 ms timer tick
        // on every checkout. read_frame is cancel-safe, so dropping it loses nothing.
        let read = self.io.read_frame();
        let mut read = std::pin::pin!(read);
        std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx).is_ready())).await
    }

    /// Whether the connection has exactly the client's startup parameters already.
    pub fn params_applied(&self, wanted: &[(String, String)]) -> bool {
        self.applied == wanted
    }

    /// Brings the connection to the client's startup parameters: SET what differs,
    /// RESET what a previous client set and this one did not.
    pub async fn apply_params(
        &mut self,
        wanted: &[(String, String)],
    ) -> Result<Vec<Frame>, BackendError> {
        if self.params_applied(wanted) {
            return Ok(Vec::new());
        }
        let mut sql = String::new();
        for (name, _) in &self.applied {
            if !wanted.iter().any(|(n, _)| n == name) {
                sql.push_str(&format!("RESET {};", quote_ident(name)));
            }
        }
        for (name, value) in wanted {
            if !self.applied.iter().any(|(n, v)| n == name && v == value) {
                // Values are SQL text: startup values arrive quoted, SET values as
                // the client wrote them (lists like search_path must stay lists).
                sql.push_str(&format!("SET {} = {};", quote_ident(name), value));
            }
        }
        let reported = self.run_internal(&sql).await;
        // Whatever happened, the server's state now differs from `applied` in ways we
        // do not track; an error leaves it unchanged, so only success updates it.
        if reported.is_ok() {
            self.applied = wanted.to_vec();
        }
        reported
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Text columns of a DataRow body.
fn parse_data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = (len as usize).min(rest.len());
        out.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
        rest = &rest[len..];
    }
    out
}
