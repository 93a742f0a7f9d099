//! Health monitor: one small task per replica that checks it answers a query and bans
//! it from reads when it does not (readmitting it when it answers again).

use super::{Node, Topology};
use crate::backend::conn::{connect, ConnectSpec, ServerConn};
use crate::config::{HealthConfig, MonitorCredentials, Role, ServerTlsMode};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub fn spawn(
    topology: Arc<ArcSwap<Topology>>,
    cfg: HealthConfig,
    creds: MonitorCredentials,
    tls: ServerTlsMode,
    shutdown: watch::Receiver<bool>,
) {
    let snapshot = topology.load();
    for node in snapshot.nodes.iter().filter(|n| n.role == Role::Replica) {
        let task = Monitor {
            node: node.clone(),
            topology: topology.clone(),
            cfg: cfg.clone(),
            spec: ConnectSpec {
                node: node.name.clone(),
                host: node.host.clone(),
                port: node.port,
                user: creds.user.clone(),
                password: creds.password.clone(),
                database: creds.database.clone(),
                tls,
                connect_timeout: Duration::from_millis(cfg.timeout_ms),
                prepared_capacity: 1,
            },
        };
        tokio::spawn(task.run(shutdown.clone()));
    }
}

struct Monitor {
    node: Arc<Node>,
    topology: Arc<ArcSwap<Topology>>,
    cfg: HealthConfig,
    spec: ConnectSpec,
}

impl Monitor {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<ServerConn> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let timeout = Duration::from_millis(self.cfg.timeout_ms);
            let ok = tokio::time::timeout(timeout, self.check(&mut conn)).await;
            let topo = self.topology.load();
            match ok {
                Ok(Ok(())) => {
                    if self.node.runtime.is_banned(topo.now_ms()) {
                        tracing::info!(node = %self.node.name, "node healthy again; back in the read set");
                    }
                    self.node.runtime.unban();
                }
                Ok(Err(e)) => {
                    conn = None;
                    self.node.ban(
                        topo.now_ms(),
                        self.cfg.ban_ms,
                        &format!("health check failed: {e}"),
                    );
                }
                Err(_) => {
                    conn = None;
                    self.node
                        .ban(topo.now_ms(), self.cfg.ban_ms, "health check timed out");
                }
            }
        }
    }

    async fn check(&self, conn: &mut Option<ServerConn>) -> anyhow::Result<()> {
        if conn.is_none() {
            *conn = Some(connect(&self.spec).await?);
        }
        let c = conn.as_mut().expect("just connected");
        c.run_internal("SELECT 1").await?;
        Ok(())
    }
}
