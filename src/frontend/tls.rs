//! TLS for clients (rustls with ring), from a PEM certificate chain and key.

use crate::config::TlsConfig;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cfg.cert).with_context(|| format!("tls.cert: {}", cfg.cert))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("tls.cert: reading {}", cfg.cert))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&cfg.key).with_context(|| format!("tls.key: {}", cfg.key))?,
    ))
    .with_context(|| format!("tls.key: reading {}", cfg.key))?
    .with_context(|| format!("tls.key: no private key in {}", cfg.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
