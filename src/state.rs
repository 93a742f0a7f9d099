//! What every task of one proxy shares: the config (behind an ArcSwap, so a reload can
//! swap it), users, pools, the topology handle, clocks, the fleet bus and counters.
//! Built once per proxy, so tests can run several in one process.

use crate::admin::counters::Counters;
use crate::backend::pool::{PoolSettings, Pools};
use crate::config::{Config, ResolvedUser};
use crate::consistency::bus::FleetBus;
use crate::consistency::flush::FlushWatch;
use crate::consistency::reach::load::ReachMaps;
use crate::consistency::TableClock;
use crate::engine::lanes::Lanes;
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::scram::Verifier;
use crate::router::parse_cache::ParseCache;
use crate::topology::balancer::Balancer;
use crate::topology::Topology;
use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

pub struct UserEntry {
    /// Shared with the sessions of this user.
    pub user: Arc<ResolvedUser>,
    pub verifier: Verifier,
}

/// State every client task reads.
pub struct Shared {
    /// The config in force. Sessions take it at the start of each request
    /// (`Engine::refresh_config`); monitors took theirs when they started.
    config: ArcSwap<Config>,
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
    /// What a write to each table can change besides it, per database (the catalog's
    /// triggers, cascades, views...): read-your-writes bounds only those reads.
    pub reach: Arc<ReachMaps>,
    /// What is known of the primary's flushed WAL (reads past it skip the wait).
    pub flushes: FlushWatch,
    /// Shares the table clock with the other proxies of a fleet (when configured).
    pub bus: Option<Arc<FleetBus>>,
    pub counters: Counters,
    /// Commit positions are read: configured so, and some read could use one (this
    /// proxy splits reads, or shares its clock with a fleet that may).
    pub captures_commits: bool,
    /// Shared read lanes (pool.multiplex_reads).
    pub lanes: Arc<Lanes>,
    /// The result cache (cache.mode other than off).
    pub cache: Option<Arc<crate::cache::Cache>>,
}

impl Shared {
    /// Builds the shared state of a proxy from its config; `shutdown` stops the fleet
    /// bus with the proxy.
    pub fn build(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Shared> {
        let users = config
            .resolved_users()?
            .into_iter()
            .map(|u| {
                let verifier = Verifier::from_password(&u.password);
                let entry = UserEntry {
                    user: Arc::new(u),
                    verifier,
                };
                (entry.user.name.clone(), entry)
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
        let topology = Arc::new(ArcSwap::from_pointee(Topology::from_config(
            &config,
            Instant::now(),
        )));
        let table_clock = Arc::new(TableClock::default());
        let bus = config.consistency.fleet_redis_url.as_ref().map(|url| {
            FleetBus::start(
                url,
                &config.consistency.fleet_prefix,
                table_clock.clone(),
                shutdown,
            )
        });
        Ok(Shared {
            parse_cache: ParseCache::new(
                config.routing.parse_cache_size,
                config.routing.write_functions.clone(),
            ),
            topology,
            balancer: Balancer::default(),
            table_clock,
            reach: Arc::default(),
            flushes: FlushWatch::default(),
            bus,
            client_slots: Arc::new(Semaphore::new(config.limits.max_client_connections)),
            users,
            pools,
            cancels: CancelRegistry::default(),
            tls,
            counters: Counters::register(),
            captures_commits: config.consistency.capture_commits
                && (config.routing.read_write_split
                    || config.consistency.fleet_redis_url.is_some()
                    || config.cache.mode != crate::config::CacheMode::Off),
            cache: crate::cache::Cache::new(&config.cache).map(Arc::new),
            lanes: Arc::new(Lanes::new(Duration::from_millis(
                config.pool.multiplex_slow_ms,
            ))),
            config: ArcSwap::from_pointee(config),
        })
    }

    /// The config in force now (a cheap load; hold it only briefly).
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The config in force now, to keep.
    pub fn config_arc(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether `held` is still the config in force (one pointer compare).
    pub fn config_is(&self, held: &Arc<Config>) -> bool {
        std::ptr::eq(Arc::as_ptr(held), Arc::as_ptr(&self.config.load()))
    }
}
