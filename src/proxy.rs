//! Wiring: builds the shared state from a config and starts the listener and admin HTTP.

use crate::backend::pool::{PoolSettings, Pools};
use crate::config::{Config, ResolvedUser};
use crate::consistency::bus::FleetBus;
use crate::consistency::TableClock;
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::counters::Counters;
use crate::frontend::scram::Verifier;
use crate::router::parse_cache::ParseCache;
use crate::topology::balancer::Balancer;
use crate::topology::Topology;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub struct UserEntry {
    /// Shared with the sessions of this user.
    pub user: Arc<ResolvedUser>,
    pub verifier: Verifier,
}

/// State every client task reads; built once per proxy so tests can run several.
pub struct Shared {
    pub config: Config,
    pub users: HashMap<String, UserEntry>,
    pub pools: Pools,
    pub cancels: CancelRegistry,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub client_slots: Arc<Semaphore>,
    pub parse_cache: ParseCache,
    /// Published by monitors; sessions only read it.
    pub topology: Arc<ArcSwap<Topology>>,
    pub balancer: Balancer,
    pub table_clock: Arc<TableClock>,
    /// Shares the table clock with the other proxies of a fleet (when configured).
    pub bus: Option<Arc<FleetBus>>,
    pub counters: Counters,
    /// Commit positions are read: configured so, and some read could use one (this
    /// proxy splits reads, or shares its clock with a fleet that may).
    pub captures_commits: bool,
    /// Shared read lanes (pool.multiplex_reads).
    pub lanes: Arc<crate::frontend::lanes::Lanes>,
}

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
        let users = config
            .resolved_users()?
            .into_iter()
            .map(|u| {
                let verifier = Verifier::from_password(&u.password);
                (
                    u.name.clone(),
                    UserEntry {
                        user: Arc::new(u),
                        verifier,
                    },
                )
            })
            .collect();
        let tls = config
            .tls
            .as_ref()
            .map(crate::frontend::tls::acceptor)
            .transpose()?;
        let pools = Pools::new(PoolSettings {
            size: config.pool.size,
            checkout_timeout: Duration::from_millis(config.pool.checkout_timeout_ms),
            idle_check: Duration::from_millis(config.pool.idle_check_ms),
            capture_interval: Duration::from_millis(config.consistency.capture_interval_ms),
        });
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
        let topology = Arc::new(ArcSwap::from_pointee(Topology::from_config(
            &config,
            Instant::now(),
        )));
        let monitor_creds = config.monitor_credentials()?;
        let table_clock = Arc::new(TableClock::default());
        let (shutdown, rx) = watch::channel(false);
        let captures_commits = config.consistency.capture_commits
            && (config.routing.read_write_split || config.consistency.fleet_redis_url.is_some());
        let lanes = Arc::new(crate::frontend::lanes::Lanes::new(
            std::time::Duration::from_millis(config.pool.multiplex_slow_ms),
        ));
        let shared = Arc::new(Shared {
            parse_cache: ParseCache::new(
                config.routing.parse_cache_size,
                config.routing.write_functions.clone(),
            ),
            topology: topology.clone(),
            balancer: Balancer::default(),
            table_clock: table_clock.clone(),
            bus: config.consistency.fleet_redis_url.as_ref().map(|url| {
                FleetBus::start(
                    url,
                    &config.consistency.fleet_prefix,
                    table_clock.clone(),
                    rx.clone(),
                )
            }),
            client_slots: Arc::new(Semaphore::new(config.limits.max_client_connections)),
            config,
            users,
            pools,
            cancels: CancelRegistry::default(),
            tls,
            counters: Counters::register(),
            captures_commits,
            lanes,
        });
        crate::topology::health::spawn(topology, &shared.config, monitor_creds, rx.clone());
        tokio::spawn(crate::frontend::listener::serve(
            listener,
            shared.clone(),
            rx.clone(),
        ));
        if let Some(l) = admin {
            tokio::spawn(crate::admin::http::serve(l, metrics, rx));
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
