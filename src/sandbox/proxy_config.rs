//! The proxy configuration that fronts a sandbox cluster (used by `pgwarden sandbox`
//! and the tests), written as YAML so it goes through the same loader as config.yaml.

use super::PgCluster;

pub fn proxy_config_yaml(
    cluster: &PgCluster,
    port: u16,
    admin_port: Option<u16>,
    pool_mode: &str,
) -> String {
    let mut y = format!("listen: 127.0.0.1:{port}\n");
    if let Some(a) = admin_port {
        y.push_str(&format!("admin_listen: 127.0.0.1:{a}\n"));
    }
    y.push_str(&format!("pool:\n  mode: {pool_mode}\n  size: 10\n"));
    y.push_str("server_tls: disable\n");
    y.push_str("users:\n  - {name: app, password: app}\n  - {name: md5user, password: md5pw}\n");
    y.push_str("nodes:\n");
    y.push_str(&format!(
        "  - {{name: primary, host: 127.0.0.1, port: {}, role: primary}}\n",
        cluster.primary.port
    ));
    for r in &cluster.replicas {
        y.push_str(&format!(
            "  - {{name: {}, host: 127.0.0.1, port: {}, role: replica}}\n",
            r.name, r.port
        ));
    }
    y
}
