//! Authenticating to a server: SCRAM-SHA-256, md5, cleartext or trust, driven by the
//! server's Authentication requests (SCRAM and md5 math from postgres-protocol).

use super::conn::BackendError;
use crate::protocol::FramedStream;
use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::{
    Authentication, Password, PasswordMessageFamily, SASLInitialResponse, SASLResponse,
};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};

pub(crate) fn decode_ctx() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

async fn send(io: &mut FramedStream, msg: PasswordMessageFamily) -> Result<(), BackendError> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf)
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

/// Answers one Authentication request; returns true once the server says AuthenticationOk.
pub(crate) async fn step(
    io: &mut FramedStream,
    mut frame: BytesMut,
    user: &str,
    password: &str,
    scram: &mut Option<ScramSha256>,
) -> Result<bool, BackendError> {
    let auth = Authentication::decode(&mut frame, &decode_ctx())
        .map_err(|e| BackendError::Protocol(format!("authentication request: {e}")))?
        .ok_or_else(|| BackendError::Protocol("short authentication request".into()))?;
    match auth {
        Authentication::Ok => return Ok(true),
        Authentication::CleartextPassword => {
            send(
                io,
                PasswordMessageFamily::Password(Password::new(password.into())),
            )
            .await?
        }
        Authentication::MD5Password(salt) => {
            let salt: [u8; 4] = salt
                .try_into()
                .map_err(|_| BackendError::Protocol("md5 salt is not 4 bytes".into()))?;
            let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
            send(io, PasswordMessageFamily::Password(Password::new(hash))).await?
        }
        Authentication::SASL(mechs) => {
            if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                return Err(BackendError::Protocol(format!(
                    "server offers no supported SASL mechanism: {mechs:?}"
                )));
            }
            let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let first = Bytes::copy_from_slice(s.message());
            *scram = Some(s);
            let msg = SASLInitialResponse::new(SCRAM_SHA_256.into(), Some(first));
            send(io, PasswordMessageFamily::SASLInitialResponse(msg)).await?
        }
        Authentication::SASLContinue(data) => {
            let s = scram
                .as_mut()
                .ok_or_else(|| BackendError::Protocol("SASL continue before start".into()))?;
            s.update(&data)
                .map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
            let msg = SASLResponse::new(Bytes::copy_from_slice(s.message()));
            send(io, PasswordMessageFamily::SASLResponse(msg)).await?
        }
        Authentication::SASLFinal(data) => {
            let mut s = scram
                .take()
                .ok_or_else(|| BackendError::Protocol("SASL final before start".into()))?;
            s.finish(&data)
                .map_err(|e| BackendError::Protocol(format!("SCRAM server signature: {e}")))?;
        }
        other => {
            return Err(BackendError::Protocol(format!(
                "server asks for an authentication method pgwarden does not support: {other:?}"
            )))
        }
    }
    Ok(false)
}
