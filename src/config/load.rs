//! Reading and validating config.yaml; errors name the field path so an operator can fix them.

use super::model::{is_socket_dir, Config, ResolvedUser, Role, ServerTlsMode};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text)
}

pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Field {
            path: if path == "." { "config".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    validate(&config)?;
    Ok(config)
}

fn invalid(path: &str, message: &str) -> ConfigError {
    ConfigError::Field {
        path: path.into(),
        message: message.into(),
    }
}

fn validate(c: &Config) -> Result<(), ConfigError> {
    if c.pool.size == 0 {
        return Err(invalid("pool.size", "must be at least 1"));
    }
    if c.pool.multiplex_slow_ms == 0 {
        return Err(invalid("pool.multiplex_slow_ms", "must be at least 1"));
    }
    if c.limits.max_client_connections == 0 {
        return Err(invalid(
            "limits.max_client_connections",
            "must be at least 1",
        ));
    }
    if c.limits.max_message_bytes < 1024 || c.limits.max_message_bytes > 0x3fff_ffff {
        return Err(invalid(
            "limits.max_message_bytes",
            "must be between 1024 and 1073741823",
        ));
    }
    if c.nodes.iter().filter(|n| n.role == Role::Primary).count() != 1 {
        return Err(invalid("nodes", "exactly one node must have role: primary"));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        if n.name.is_empty() || n.host.is_empty() {
            return Err(invalid(
                &format!("nodes[{i}]"),
                "name and host are required",
            ));
        }
        if is_socket_dir(&n.host) && c.server_tls == ServerTlsMode::Require {
            return Err(invalid(
                &format!("nodes[{i}].host"),
                "a Unix socket directory cannot be used with server_tls: require \
                 (PostgreSQL offers no TLS on Unix sockets)",
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if !names.insert(&n.name) {
            return Err(invalid(
                &format!("nodes[{i}].name"),
                "node names must be unique",
            ));
        }
    }
    if c.routing.parse_cache_size == 0 {
        return Err(invalid("routing.parse_cache_size", "must be at least 1"));
    }
    if c.consistency.lag_interval_ms == 0 {
        return Err(invalid("consistency.lag_interval_ms", "must be at least 1"));
    }
    if c.health.timeout_ms == 0 {
        return Err(invalid("health.timeout_ms", "must be at least 1"));
    }
    if c.users.is_empty() {
        return Err(invalid("users", "at least one user is required"));
    }
    for (i, _) in c.users.iter().enumerate() {
        resolve_user(c, i)?;
    }
    c.monitor_credentials()?;
    super::cache::validate(&c.cache, c.consistency.capture_commits)
        .map_err(|(path, message)| invalid(&path, &message))?;
    Ok(())
}

fn secret(
    path: &str,
    value: &Option<String>,
    env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (value, env) {
        (Some(_), Some(_)) => Err(invalid(
            path,
            "set either the password or its _env, not both",
        )),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| invalid(path, &format!("environment variable {var} is not set"))),
        (None, None) => Ok(None),
    }
}

/// Resolves user `i`, reading passwords from the environment where configured.
pub(crate) fn resolve_user(c: &Config, i: usize) -> Result<ResolvedUser, ConfigError> {
    let u = &c.users[i];
    let path = format!("users[{i}]");
    let password = secret(&format!("{path}.password"), &u.password, &u.password_env)?;
    let server_password = secret(
        &format!("{path}.server_password"),
        &u.server_password,
        &u.server_password_env,
    )?;
    let password = match password {
        Some(p) => p,
        None if c.auth.method == super::AuthMethod::Trust => String::new(),
        None => {
            return Err(invalid(
                &format!("{path}.password"),
                "required unless auth.method is trust",
            ))
        }
    };
    Ok(ResolvedUser {
        name: u.name.clone(),
        server_user: u.server_user.clone().unwrap_or_else(|| u.name.clone()),
        server_password: server_password.unwrap_or_else(|| password.clone()),
        password,
    })
}

impl Config {
    /// Every user with secrets resolved; only valid configs reach here.
    pub fn resolved_users(&self) -> Result<Vec<ResolvedUser>, ConfigError> {
        (0..self.users.len())
            .map(|i| resolve_user(self, i))
            .collect()
    }

    /// Credentials for the proxy's own health and lag checks.
    pub fn monitor_credentials(&self) -> Result<super::MonitorCredentials, ConfigError> {
        let first = resolve_user(self, 0)?;
        let password = secret(
            "monitor.password",
            &self.monitor.password,
            &self.monitor.password_env,
        )?;
        Ok(super::MonitorCredentials {
            user: self.monitor.user.clone().unwrap_or(first.server_user),
            password: password.unwrap_or(first.server_password),
            database: self
                .monitor
                .database
                .clone()
                .unwrap_or_else(|| "postgres".into()),
        })
    }

    /// Settings that loaded but do nothing, each with what to use instead: shown by
    /// `check-config` and logged at start, so an operator is not misled by them.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(ms) = self.health.interval_ms {
            out.push(format!(
                "health.interval_ms ({ms}) has no effect: every node is checked with each lag \
                 sample, every consistency.lag_interval_ms ({} ms); remove it, or set that",
                self.consistency.lag_interval_ms
            ));
        }
        out
    }

    pub fn primary(&self) -> &super::Node {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Primary)
            .expect("validated: one primary")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MultiplexReads;

    const BASE: &str = "users: [{name: app, password: app}]\nnodes: [{name: p, host: 127.0.0.1, port: 5432, role: primary}]\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str(BASE).unwrap();
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.listen.port(), 6432);
        assert_eq!(c.primary().name, "p");
    }

    #[test]
    fn a_setting_that_does_nothing_loads_with_a_notice() {
        assert!(load_str(BASE).unwrap().notices().is_empty());
        let c = load_str(&format!("{BASE}health: {{interval_ms: 200}}\n")).unwrap();
        let notices = c.notices();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].starts_with("health.interval_ms (200) has no effect"));
        assert!(notices[0].contains("consistency.lag_interval_ms (100 ms)"));
        let e = load_str(&format!("{BASE}health: {{timeout_ms: 0}}\n")).unwrap_err();
        assert!(e.to_string().starts_with("health.timeout_ms"), "{e}");
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = load_str(&format!("{BASE}pool: {{size: lots}}\n")).unwrap_err();
        assert!(e.to_string().starts_with("pool.size"), "{e}");
        let e = load_str(&format!("{BASE}pool: {{sise: 3}}\n")).unwrap_err();
        assert!(e.to_string().contains("sise"), "{e}");
        let e = load_str("users: []\nnodes: []\n").unwrap_err();
        assert!(e.to_string().starts_with("nodes"), "{e}");
    }

    #[test]
    fn multiplex_reads_takes_a_mode_or_a_flag() {
        let mode = |v: &str| {
            load_str(&format!("{BASE}pool: {{multiplex_reads: {v}}}\n"))
                .map(|c| c.pool.multiplex_reads)
        };
        assert_eq!(
            load_str(BASE).unwrap().pool.multiplex_reads,
            MultiplexReads::Auto
        );
        assert_eq!(mode("always").unwrap(), MultiplexReads::Always);
        assert_eq!(mode("off").unwrap(), MultiplexReads::Off);
        assert_eq!(mode("true").unwrap(), MultiplexReads::Auto);
        assert_eq!(mode("false").unwrap(), MultiplexReads::Off);
        let e = mode("sometimes").unwrap_err().to_string();
        assert!(
            e.starts_with("pool.multiplex_reads") && e.contains("auto, always or off"),
            "{e}"
        );
        let e = load_str(&format!("{BASE}pool: {{multiplex_slow_ms: 0}}\n")).unwrap_err();
        assert!(e.to_string().starts_with("pool.multiplex_slow_ms"), "{e}");
    }

    #[test]
    fn a_socket_directory_host_refuses_required_tls() {
        let nodes = "nodes: [{name: p, host: /var/run/postgresql, role: primary}]\n";
        let users = "users: [{name: app, password: app}]\n";
        let c = load_str(&format!("{users}{nodes}")).unwrap();
        assert_eq!(c.primary().host, "/var/run/postgresql");
        let e = load_str(&format!("{users}{nodes}server_tls: require\n")).unwrap_err();
        assert!(
            e.to_string().starts_with("nodes[0].host") && e.to_string().contains("TLS"),
            "{e}"
        );
    }

    #[test]
    fn password_from_missing_env_is_an_error() {
        let e = load_str(
            "users: [{name: app, password_env: PGWARDEN_SURELY_UNSET_VAR}]\nnodes: [{name: p, host: h, role: primary}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("PGWARDEN_SURELY_UNSET_VAR"), "{e}");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let c = load_str(BASE).unwrap();
        let s = format!("{:?}", c.users[0]);
        assert!(
            !s.contains("password: Some(\"app\")") && s.contains("redacted"),
            "{s}"
        );
    }
}

#[cfg(test)]
mod shipped_config {
    #[test]
    fn the_documented_config_yaml_loads() {
        let c = super::load_str(include_str!("../../config.yaml")).expect("config.yaml is valid");
        assert_eq!(c.listen.port(), 6432);
        assert_eq!(c.pool.size, 20);
    }
}
