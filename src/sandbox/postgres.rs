//! A throwaway PostgreSQL primary with streaming replicas, all in one temp dir, for the
//! sandbox command and integration tests. Dropping the cluster stops the servers and
//! deletes everything, also when a test panics.

mod node;
mod template;
mod tools;

pub use node::PgNode;

use crate::sandbox::ports::free_port;
use anyhow::{anyhow, Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tools::{run, PgTools};

/// Roles every cluster has: `app` (SCRAM password 'app', owns database `app`) and `md5user`
/// (md5-stored password 'md5pw'), so tests cover both password mechanisms over TCP.
const STANDARD_SETUP: [&str; 4] = [
    "CREATE ROLE app LOGIN PASSWORD 'app'",
    "CREATE DATABASE app OWNER app",
    "SET password_encryption = 'md5'",
    "CREATE ROLE md5user LOGIN PASSWORD 'md5pw'",
];

/// A new port is tried this many times when another process took the chosen one first.
const START_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Streaming replicas, each with its own replication slot on the primary.
    pub replicas: usize,
    /// Extra postgresql.conf lines for every node, e.g. `"log_statement = 'all'"`.
    pub extra_conf: Vec<String>,
    /// Statements run on the primary as postgres in database `postgres`, each on its own,
    /// after the standard roles exist and before the replicas are cloned.
    pub setup_sql: Vec<String>,
}

#[derive(Debug)]
pub struct PgCluster {
    pub primary: PgNode,
    pub replicas: Vec<PgNode>,
    tools: Arc<PgTools>,
    dir: TempDir,
}

impl PgCluster {
    /// Starts a primary from the cached initdb template, runs the setup SQL, then clones and
    /// starts the replicas in parallel. Returns once every node accepts queries.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster> {
        let tools = Arc::new(PgTools::discover()?);
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-pg-")
            .tempdir_in(std::env::temp_dir())?;
        tools.chown(dir.path())?;
        let primary = PgNode::new("primary", free_port(), dir.path(), tools.clone());
        template::copy_template(&tools, &primary.data_dir)?;
        append_conf(&primary.data_dir, dir.path(), &opts.extra_conf)?;
        // From here on Drop stops whatever was started if a later step fails.
        let mut cluster = PgCluster {
            primary,
            replicas: Vec::new(),
            tools,
            dir,
        };
        start_new_node(&mut cluster.primary)?;
        let setup: Vec<&str> = STANDARD_SETUP
            .into_iter()
            .chain(opts.setup_sql.iter().map(String::as_str))
            .collect();
        cluster.primary.psql_each("postgres", "postgres", &setup)?;

        // Slots are made before any clone starts, reserving WAL from now on: with
        // `pg_basebackup -C` the slot only appears once streaming starts, and a parallel
        // clone's checkpoint can recycle the segment this clone still needs by then.
        let slots: Vec<String> = (1..=opts.replicas)
            .map(|i| format!("SELECT pg_create_physical_replication_slot('replica{i}', true)"))
            .collect();
        if !slots.is_empty() {
            cluster.primary.psql_each("postgres", "postgres", &slots)?;
        }
        let results: Vec<Result<PgNode>> = std::thread::scope(|s| {
            let cluster = &cluster;
            let handles: Vec<_> = (1..=opts.replicas)
                .map(|i| s.spawn(move || cluster.start_replica(i)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("replica thread panicked")))
                })
                .collect()
        });
        let mut first_error = None;
        for result in results {
            match result {
                Ok(node) => cluster.replicas.push(node),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(cluster),
        }
    }

    /// The temp dir holding every node's data dir and the unix sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until every replica has replayed the primary's current WAL position, i.e.
    /// everything committed on the primary before this call is visible on every replica.
    pub fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<()> {
        // With synchronous_commit=off a commit can still sit in WAL buffers, so
        // pg_current_wal_lsn() (the write position) may be behind it. A synchronous commit
        // that wrote WAL (a transactional no-op message; an xid alone writes none) flushes all
        // WAL before it, so the write position after it covers every earlier commit.
        let out = self.primary.psql_each(
            "postgres",
            "postgres",
            &[
                "SET synchronous_commit = on",
                "SELECT pg_logical_emit_message(true, 'pgwarden', 'flush')",
                "SELECT pg_current_wal_lsn()",
            ],
        )?;
        let lsn = out.lines().last().unwrap_or_default();
        let check = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}', false)");
        let deadline = Instant::now() + timeout;
        for replica in &self.replicas {
            loop {
                let replayed = replica.psql("postgres", "postgres", &check);
                if matches!(&replayed, Ok(s) if s == "t") {
                    break;
                }
                if Instant::now() > deadline {
                    let at =
                        replica.psql("postgres", "postgres", "SELECT pg_last_wal_replay_lsn()");
                    return Err(anyhow!(
                        "{} has not replayed up to {lsn} after {timeout:?} (at {at:?})\n{}",
                        replica.name,
                        replica.log_tail()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Clones the primary through its slot, then starts the clone as a hot standby.
    fn start_replica(&self, index: usize) -> Result<PgNode> {
        let name = format!("replica{index}");
        let mut node = PgNode::new(&name, free_port(), self.dir(), self.tools.clone());
        tracing::debug!(node = %name, "pg_basebackup");
        // -c fast: the default spread checkpoint can take minutes; -N: no fsync needed.
        run(self
            .tools
            .server_cmd("pg_basebackup", self.dir())
            .args([
                "-h",
                &self.primary.host,
                "-p",
                &self.primary.port.to_string(),
            ])
            .args(["-U", "postgres", "-R", "-X", "stream", "-S", &name])
            .args(["-c", "fast", "-N", "-D"])
            .arg(&node.data_dir))?;
        // The clone brought the primary's log along; the replica's log starts empty.
        let _ = std::fs::remove_file(node.log_file());
        start_new_node(&mut node)?;
        Ok(node)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Stop all nodes at once; the TempDir field then removes the files.
        let stopping: Vec<_> = self
            .replicas
            .iter()
            .chain(std::iter::once(&self.primary))
            .filter_map(PgNode::spawn_stop_immediate)
            .collect();
        for mut child in stopping {
            let _ = child.wait();
        }
    }
}

/// Per-cluster settings, appended to postgresql.conf (later lines win) so replicas inherit them.
fn append_conf(data_dir: &Path, socket_dir: &Path, extra: &[String]) -> Result<()> {
    let socket_dir = socket_dir.to_str().context("temp dir path is not UTF-8")?;
    let mut text = format!(
        "\nunix_socket_directories = '{}'\n",
        socket_dir.replace('\'', "''")
    );
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.conf"))?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// First start of a node: sets its port and name, and moves to another port when some other
/// process bound the chosen one in the meantime.
fn start_new_node(node: &mut PgNode) -> Result<()> {
    for attempt in 1..=START_ATTEMPTS {
        node.append_auto_conf(&[
            format!("port = {}", node.port),
            format!("cluster_name = '{}'", node.name),
        ])?;
        let _ = std::fs::remove_file(node.log_file());
        let Err(e) = node.start() else {
            return Ok(());
        };
        // A start that timed out may have left a server running.
        node.stop_immediate();
        let log = std::fs::read_to_string(node.log_file()).unwrap_or_default();
        let port_taken = log.contains("could not bind") || log.contains("Address already in use");
        if !port_taken || attempt == START_ATTEMPTS {
            return Err(e);
        }
        tracing::debug!(node = %node.name, port = node.port, "port taken, retrying");
        node.port = free_port();
    }
    unreachable!("the last attempt returns")
}
