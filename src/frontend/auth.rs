//! Authenticating a client against the users in config: SCRAM-SHA-256, md5 or trust.

use super::scram::{self, Verifier};
use crate::config::AuthMethod;
use crate::protocol::{sqlstate, to_client, FramedStream};
use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::Message;

pub struct AuthUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub verifier: &'a Verifier,
}

#[derive(Debug)]
pub struct AuthFailure {
    pub code: &'static str,
    pub message: String,
}

fn failed(user: &str) -> AuthFailure {
    AuthFailure {
        code: sqlstate::INVALID_PASSWORD,
        message: format!("password authentication failed for user \"{user}\""),
    }
}

fn protocol(msg: &str) -> AuthFailure {
    AuthFailure {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: msg.to_string(),
    }
}

async fn send(io: &mut FramedStream, a: Authentication) -> Result<(), AuthFailure> {
    let mut b = BytesMut::new();
    to_client::auth(&mut b, &a);
    io.write_all(&b)
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    io.flush().await.map_err(|e| protocol(&e.to_string()))
}

/// The body of the next 'p' message from the client.
async fn password_message(io: &mut FramedStream) -> Result<BytesMut, AuthFailure> {
    match io.read_frame().await {
        Ok(Some(f)) if f.tag == b'p' => {
            let mut data = f.data;
            match PasswordMessageFamily::decode(&mut data, &crate::backend::auth::decode_ctx()) {
                Ok(Some(PasswordMessageFamily::Raw(body))) => Ok(body),
                _ => Err(protocol("invalid password message")),
            }
        }
        Ok(Some(f)) => Err(protocol(&format!(
            "expected password response, got message type {:?}",
            f.tag as char
        ))),
        _ => Err(protocol("connection closed during authentication")),
    }
}

/// Reads a SASLInitialResponse body with every length checked (pgwire's decoder
/// trusts them).
fn sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mech = std::str::from_utf8(&body[..nul]).ok()?;
    let mut rest = &body[nul + 1..];
    if rest.len() < 4 {
        return None;
    }
    let len = rest.get_i32();
    if len < 0 || len as usize != rest.len() {
        return None;
    }
    Some((mech, rest))
}

/// Runs the configured method; `Ok` means the client may proceed.
pub async fn authenticate(
    io: &mut FramedStream,
    method: AuthMethod,
    user: Option<AuthUser<'_>>,
    name: &str,
) -> Result<(), AuthFailure> {
    if method == AuthMethod::Trust {
        return if user.is_some() {
            Ok(())
        } else {
            Err(failed(name))
        };
    }
    let Some(user) = user else {
        // Unknown users still go through a password prompt so the answer does not
        // reveal which names exist.
        send(io, Authentication::CleartextPassword).await?;
        let _ = password_message(io).await?;
        return Err(failed(name));
    };
    match method {
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            send(io, Authentication::MD5Password(salt.to_vec())).await?;
            let body = password_message(io).await?;
            let given = body.strip_suffix(&[0]).unwrap_or(&body);
            let want = postgres_protocol::authentication::md5_hash(
                user.name.as_bytes(),
                user.password.as_bytes(),
                salt,
            );
            if given == want.as_bytes() {
                Ok(())
            } else {
                Err(failed(user.name))
            }
        }
        AuthMethod::ScramSha256 => {
            send(io, Authentication::SASL(vec!["SCRAM-SHA-256".into()])).await?;
            let body = password_message(io).await?;
            let (mech, first) =
                sasl_initial(&body).ok_or_else(|| protocol("malformed SASLInitialResponse"))?;
            if mech != "SCRAM-SHA-256" {
                return Err(protocol(
                    "client selected an invalid SASL authentication mechanism",
                ));
            }
            let ex = scram::server_first(first, user.verifier).map_err(protocol)?;
            send(
                io,
                Authentication::SASLContinue(Bytes::copy_from_slice(
                    ex.server_first_message().as_bytes(),
                )),
            )
            .await?;
            let body = password_message(io).await?;
            match ex.verify(&body, user.verifier) {
                Ok(fin) => send(io, Authentication::SASLFinal(Bytes::from(fin.into_bytes()))).await,
                Err("wrong password") => Err(failed(user.name)),
                Err(e) => Err(protocol(e)),
            }
        }
        AuthMethod::Trust => unreachable!("handled above"),
    }
}
