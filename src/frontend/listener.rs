//! Accepts clients, enforces the client limit, and runs each client in its own task.

use super::startup::{self, Initial, StartupError};
use crate::protocol::sqlstate;
use crate::state::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(tcp, &shared).await {
                tracing::info!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
}

async fn handle(tcp: TcpStream, shared: &Arc<Shared>) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let timeout = Duration::from_millis(shared.config().limits.startup_timeout_ms);
    // Boxed so the TLS handshake's large state is freed once the session runs.
    let negotiation = Box::pin(startup::negotiate(tcp, shared.tls.as_ref()));
    let initial = match tokio::time::timeout(timeout, negotiation).await {
        Err(_) => anyhow::bail!("startup timed out"),
        Ok(Err(StartupError::Fatal {
            stream,
            code,
            message,
        })) => {
            if let Some(mut s) = stream {
                startup::refuse(&mut s, code, &message).await;
            }
            anyhow::bail!("startup refused: {message}");
        }
        Ok(Err(StartupError::Io(e))) => return Err(e.into()),
        Ok(Ok(i)) => i,
    };
    match initial {
        Initial::Cancel { pid, secret } => {
            shared.cancels.cancel(pid, secret).await;
            Ok(())
        }
        Initial::Startup { mut stream, params } => {
            // Cancel requests above do not count against the client limit.
            let Ok(permit) = shared.client_slots.clone().try_acquire_owned() else {
                startup::refuse(
                    &mut stream,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already",
                )
                .await;
                metrics::counter!("pgwarden_clients_refused_total").increment(1);
                anyhow::bail!("client limit reached");
            };
            metrics::gauge!("pgwarden_client_connections").increment(1.0);
            let res = crate::engine::run(stream, params, shared.clone(), timeout).await;
            metrics::gauge!("pgwarden_client_connections").decrement(1.0);
            drop(permit);
            res
        }
    }
}

#[cfg(test)]
mod idle_footprint {
    /// An idle client costs its task's future plus its socket: the future must stay
    /// well inside the 2 KiB per idle client the proxy aims for (issue 4).
    #[test]
    fn a_client_task_fits_the_idle_budget() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let cfg = crate::config::load_str(
                "listen: 127.0.0.1:0\nusers: [{name: app, password: app}]\n\
                 nodes: [{name: p, host: 127.0.0.1, port: 1, role: primary}]\n",
            )
            .unwrap();
            let proxy = crate::Proxy::start(cfg, None).await.unwrap();
            let task = super::handle(c, &proxy.shared);
            assert!(
                size(&task) <= 1024,
                "a client task's future is {} bytes",
                size(&task)
            );
        });
    }
}
