//! Wiring: builds the shared state from a config and starts the listener, the
//! monitors and the admin HTTP endpoint.

use crate::config::Config;
use crate::state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Proxy {
    /// Binds the listeners and starts serving. `metrics` renders /metrics when given.
    pub async fn start(
        config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> anyhow::Result<Proxy> {
        for notice in config.notices() {
            tracing::warn!("config: {notice}");
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let admin = match config.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("admin_listen {a}: {e}"))?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let monitor_creds = config.monitor_credentials()?;
        let (shutdown, rx) = watch::channel(false);
        let shared = Arc::new(Shared::build(config, rx.clone())?);
        crate::topology::health::spawn(
            shared.topology.clone(),
            &shared.config(),
            monitor_creds,
            rx.clone(),
        );
        tokio::spawn(crate::frontend::listener::serve(
            listener,
            shared.clone(),
            rx.clone(),
        ));
        if let Some(l) = admin {
            tokio::spawn(crate::admin::http::listen(
                l,
                metrics,
                shared.cache.clone(),
                rx,
            ));
        }
        tracing::info!(%addr, "pgwarden listening");
        Ok(Proxy {
            addr,
            admin_addr,
            shared,
            shutdown,
        })
    }

    /// Stops accepting; clients already connected finish on their own.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
