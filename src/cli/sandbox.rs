//! `pgwarden sandbox`: a primary, two replicas and the proxy, all local, removed on exit.

use crate::sandbox::{ClusterOptions, PgCluster};

pub async fn run(port: u16, admin_port: u16, pool_mode: &str) -> anyhow::Result<()> {
    eprintln!("starting PostgreSQL primary and two replicas...");
    let cluster = tokio::task::spawn_blocking(|| {
        PgCluster::start(ClusterOptions {
            replicas: 2,
            ..Default::default()
        })
    })
    .await??;
    let yaml = crate::sandbox::proxy_config_yaml(&cluster, port, Some(admin_port), pool_mode);
    let config = crate::config::load_str(&yaml)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let proxy = crate::Proxy::start(config, Some(metrics)).await?;
    println!("proxy    postgres://app:app@{}/app", proxy.addr);
    println!("primary  {}", cluster.primary.dsn("app", "app", "app"));
    for r in &cluster.replicas {
        println!("{:<8} {}", r.name, r.dsn("app", "app", "app"));
    }
    if let Some(a) = proxy.admin_addr {
        println!("metrics  http://{a}/metrics");
    }
    eprintln!("sandbox running; press Ctrl-C to stop and remove it");
    super::wait_for_signal().await;
    eprintln!("stopping sandbox...");
    proxy.stop();
    drop(proxy);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
