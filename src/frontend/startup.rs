//! The first packets of a client connection: SSLRequest/GSSENCRequest negotiation,
//! then a StartupMessage or a CancelRequest. Lengths are bounded before reading.

use crate::protocol::{sqlstate, to_client, Stream};
use bytes::{BufMut, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// PostgreSQL's own bound on a startup packet.
const MAX_STARTUP_PACKET: usize = 10_000;
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

pub enum Initial {
    Startup {
        stream: Stream,
        params: BTreeMap<String, String>,
    },
    Cancel {
        pid: i32,
        secret: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Sent to the client as a FATAL error before closing.
    #[error("{message}")]
    Fatal {
        stream: Option<Box<Stream>>,
        code: &'static str,
        message: String,
    },
}

fn fatal(stream: Stream, code: &'static str, message: impl Into<String>) -> StartupError {
    StartupError::Fatal {
        stream: Some(Box::new(stream)),
        code,
        message: message.into(),
    }
}

pub async fn negotiate(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Initial, StartupError> {
    let mut stream = Stream::Plain(tcp);
    loop {
        let len = stream.read_u32().await? as usize;
        if !(8..=MAX_STARTUP_PACKET).contains(&len) {
            return Err(fatal(
                stream,
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid length of startup packet: {len}"),
            ));
        }
        let mut packet = BytesMut::with_capacity(len);
        packet.put_u32(len as u32);
        packet.resize(len, 0);
        stream.read_exact(&mut packet[4..]).await?;
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST => {
                stream = match (stream, tls) {
                    (Stream::Plain(mut tcp), Some(acceptor)) => {
                        tcp.write_all(b"S").await?;
                        Stream::ServerTls(Box::new(acceptor.accept(tcp).await?))
                    }
                    (mut s, _) => {
                        s.write_all(b"N").await?;
                        s
                    }
                };
            }
            GSSENC_REQUEST => stream.write_all(b"N").await?,
            CANCEL_REQUEST if len == 16 => {
                let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
                return Ok(Initial::Cancel { pid, secret });
            }
            _ if code >> 16 == 3 => return startup(stream, packet).await,
            _ => {
                return Err(fatal(
                    stream,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        code >> 16,
                        code & 0xffff
                    ),
                ))
            }
        }
    }
}

async fn startup(mut stream: Stream, mut packet: BytesMut) -> Result<Initial, StartupError> {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    let msg = match Startup::decode(&mut packet, &ctx) {
        Ok(Some(m)) => m,
        _ => {
            return Err(fatal(
                stream,
                sqlstate::PROTOCOL_VIOLATION,
                "invalid startup packet layout",
            ))
        }
    };
    let mut params = msg.parameters;
    // Protocol options (`_pq_.*`) and minor versions above 0 are declined the way
    // PostgreSQL does it: NegotiateProtocolVersion, then the session goes on at 3.0.
    let unsupported: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if msg.protocol_number_minor > 0 || !unsupported.is_empty() {
        let mut b = BytesMut::new();
        to_client::negotiate_protocol_version(&mut b, 0, &unsupported);
        stream.write_all(&b).await?;
        for s in &unsupported {
            params.remove(s);
        }
    }
    if !params.contains_key("user") {
        return Err(fatal(
            stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    if params.contains_key("replication")
        && params
            .get("replication")
            .map(|v| v != "false" && v != "0" && v != "off")
            .unwrap_or(false)
    {
        return Err(fatal(
            stream,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgwarden",
        ));
    }
    Ok(Initial::Startup { stream, params })
}

/// Writes a FATAL error to a client that is being refused, best effort.
pub async fn refuse(stream: &mut Stream, code: &str, message: &str) {
    let _ = stream.write_all(&to_client::fatal(code, message)).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}
