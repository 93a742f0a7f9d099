//! `pgwarden run` and `pgwarden check-config`.

use crate::config;
use std::path::Path;

pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let c = config::load_file(path)?;
    println!(
        "{}: ok ({} node(s), {} user(s), pool mode {:?}, listen {})",
        path.display(),
        c.nodes.len(),
        c.users.len(),
        c.pool.mode,
        c.listen
    );
    for notice in c.notices() {
        println!("warning: {notice}");
    }
    Ok(())
}

pub async fn run(c: config::Config) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let proxy = crate::Proxy::start(c, Some(metrics)).await?;
    super::wait_for_signal().await;
    tracing::info!("shutting down");
    proxy.stop();
    Ok(())
}
