//! Server side of SCRAM-SHA-256 (RFC 5802/7677) for client logins, without channel
//! binding. Verifiers come from postgres-protocol; only the exchange lives here.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What the proxy keeps per user: never the clear password.
#[derive(Clone)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Verifier {
    pub fn from_password(password: &str) -> Verifier {
        Self::parse(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
        .expect("postgres-protocol produces a well-formed verifier")
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iter.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        })
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn attr(msg: &str, name: char) -> Option<&str> {
    msg.split(',')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// State between the server-first and client-final messages.
pub struct Exchange {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Handles client-first; returns the state and the server-first message.
pub fn server_first(client_first: &[u8], v: &Verifier) -> Result<Exchange, &'static str> {
    let msg = std::str::from_utf8(client_first).map_err(|_| "SCRAM message is not UTF-8")?;
    let (cbind, rest) = msg
        .split_once(',')
        .ok_or("malformed SCRAM client-first message")?;
    let (_authzid, bare) = rest
        .split_once(',')
        .ok_or("malformed SCRAM client-first message")?;
    if cbind.starts_with('p') {
        return Err("SCRAM channel binding is not supported");
    }
    if cbind != "n" && cbind != "y" {
        return Err("malformed SCRAM GS2 header");
    }
    let client_nonce = attr(bare, 'r').ok_or("SCRAM client nonce missing")?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err("invalid SCRAM client nonce");
    }
    let nonce = format!("{client_nonce}{}", B64.encode(rand::random::<[u8; 18]>()));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&v.salt), v.iterations);
    Ok(Exchange {
        gs2_header: format!("{},{},", cbind, &rest[..rest.len() - bare.len() - 1]),
        client_first_bare: bare.to_string(),
        server_first,
        nonce,
    })
}

impl Exchange {
    pub fn server_first_message(&self) -> &str {
        &self.server_first
    }

    /// Checks client-final; on success returns the server-final message.
    pub fn verify(&self, client_final: &[u8], v: &Verifier) -> Result<String, &'static str> {
        let msg = std::str::from_utf8(client_final).map_err(|_| "SCRAM message is not UTF-8")?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or("SCRAM proof missing")?;
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err("SCRAM nonce mismatch");
        }
        if attr(without_proof, 'c') != Some(B64.encode(&self.gs2_header).as_str()) {
            return Err("SCRAM channel binding mismatch");
        }
        let proof = B64.decode(proof).map_err(|_| "SCRAM proof is not base64")?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&v.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err("wrong password");
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if Sha256::digest(&client_key).as_slice() != v.stored_key.as_slice() {
            return Err("wrong password");
        }
        Ok(format!(
            "v={}",
            B64.encode(hmac(&v.server_key, auth_message.as_bytes()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(client_pw: &str, server_pw: &str) -> Result<(), &'static str> {
        let v = Verifier::from_password(server_pw);
        let mut client = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let ex = server_first(client.message(), &v)?;
        client.update(ex.server_first_message().as_bytes()).unwrap();
        let fin = ex.verify(client.message(), &v)?;
        client
            .finish(fin.as_bytes())
            .map_err(|_| "client rejected server signature")
    }

    #[test]
    fn exchange_with_postgres_protocol_client() {
        assert!(run("s3cret", "s3cret").is_ok());
        assert_eq!(run("wrong", "s3cret"), Err("wrong password"));
    }

    #[test]
    fn rejects_garbage() {
        let v = Verifier::from_password("x");
        assert!(server_first(b"garbage", &v).is_err());
        assert!(server_first(b"p=tls-server-end-point,,n=,r=abc", &v).is_err());
        let ex = server_first(b"n,,n=,r=abc", &v).unwrap();
        assert!(ex.verify(b"c=biws,r=nope,p=AAAA", &v).is_err());
        assert!(ex.verify(b"\xff", &v).is_err());
    }
}
