//! One PostgreSQL server of a sandbox cluster: start, stop, promote, repoint, and run SQL
//! through psql over its private unix socket (trusted for every role).

use super::tools::{run, PgTools};
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a node gets to start, stop or promote before we give up and show its log.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const LOG_FILE: &str = "server.log";

/// A PostgreSQL server listening on `host:port`, with its data in `data_dir`.
#[derive(Debug, Clone)]
pub struct PgNode {
    /// "primary", "replica1", ...; also its `cluster_name` and replication application_name.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    socket_dir: PathBuf,
    tools: Arc<PgTools>,
}

impl PgNode {
    pub(crate) fn new(name: &str, port: u16, cluster_dir: &Path, tools: Arc<PgTools>) -> PgNode {
        PgNode {
            name: name.to_string(),
            host: "127.0.0.1".to_string(),
            port,
            data_dir: cluster_dir.join(name),
            socket_dir: cluster_dir.to_path_buf(),
            tools,
        }
    }

    /// `postgres://user:password@127.0.0.1:port/db`, percent-encoding what needs it.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            encode(user),
            encode(password),
            self.host,
            self.port,
            encode(db)
        )
    }

    /// Runs `sql` with `psql -X -A -t -q` as `user` (no password: the unix socket is trusted)
    /// and returns its output without the final newline. Statements in one string run as one
    /// implicit transaction; an error anywhere fails the call with psql's message.
    pub fn psql(&self, user: &str, db: &str, sql: &str) -> Result<String> {
        self.psql_each(user, db, &[sql])
    }

    /// Like [`PgNode::psql`], with each statement sent as its own query (so CREATE DATABASE
    /// and SET before later statements work), stopping at the first error.
    pub fn psql_each<S: AsRef<str>>(&self, user: &str, db: &str, sqls: &[S]) -> Result<String> {
        let mut cmd = self.tools.client_cmd("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", user, "-d", db]);
        for sql in sqls {
            cmd.arg("-c").arg(sql.as_ref());
        }
        let out = run(&mut cmd).with_context(|| format!("psql on {}", self.name))?;
        let text = String::from_utf8(out.stdout).context("psql output is not UTF-8")?;
        Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
    }

    /// The server log (`pg_ctl -l`), kept in the data dir.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Starts the (stopped) node on its port and waits until it accepts queries.
    pub fn start(&self) -> Result<()> {
        tracing::debug!(node = %self.name, port = self.port, "starting");
        let started = run(self
            .pg_ctl()
            .args([
                "start",
                "-w",
                "-t",
                &READY_TIMEOUT.as_secs().to_string(),
                "-l",
            ])
            .arg(self.log_file())
            .arg("-D")
            .arg(&self.data_dir));
        if let Err(e) = started {
            return Err(e.context(self.log_tail()));
        }
        self.wait_until(
            || self.psql("postgres", "postgres", "SELECT 1").is_ok(),
            "ready",
        )
    }

    /// Clean (fast) shutdown; errors are ignored, as for a node that is already down.
    pub fn stop(&self) {
        if let Err(e) = run(&mut self.stop_cmd("fast")) {
            tracing::debug!(node = %self.name, "stop: {e:#}");
        }
    }

    /// Crash-like shutdown: no checkpoint, clients are cut off. Errors are ignored.
    pub fn stop_immediate(&self) {
        if let Err(e) = run(&mut self.stop_cmd("immediate")) {
            tracing::debug!(node = %self.name, "stop: {e:#}");
        }
    }

    /// Promotes a replica and waits until it accepts writes.
    pub fn promote(&self) -> Result<()> {
        tracing::debug!(node = %self.name, "promoting");
        run(self
            .pg_ctl()
            .args([
                "promote",
                "-w",
                "-t",
                &READY_TIMEOUT.as_secs().to_string(),
                "-D",
            ])
            .arg(&self.data_dir))
        .map_err(|e| e.context(self.log_tail()))?;
        self.wait_until(
            || matches!(self.psql("postgres", "postgres", "SELECT pg_is_in_recovery()"), Ok(s) if s == "f"),
            "promoted",
        )
    }

    /// Repoints a replica at `primary` (after a failover): new `primary_conninfo`, no slot
    /// (the new primary has none for it), applied by a reload; the new timeline is followed
    /// because `recovery_target_timeline` defaults to `latest`.
    pub fn follow(&self, primary: &PgNode) -> Result<()> {
        self.append_auto_conf(&[
            format!(
                "primary_conninfo = 'host={} port={} user=postgres application_name={}'",
                primary.host, primary.port, self.name
            ),
            "primary_slot_name = ''".to_string(),
        ])?;
        self.psql("postgres", "postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// Appends settings to postgresql.auto.conf, where later lines win. Appending keeps the
    /// file owned by postgres when we are root.
    pub(crate) fn append_auto_conf(&self, lines: &[String]) -> Result<()> {
        let path = self.data_dir.join("postgresql.auto.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(format!("\n{}\n", lines.join("\n")).as_bytes())?;
        Ok(())
    }

    /// `pg_ctl stop`, spawned but not waited for, so a cluster can stop all nodes at once.
    pub(crate) fn spawn_stop_immediate(&self) -> Option<Child> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return None;
        }
        self.stop_cmd("immediate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("{} log ({}):\n{tail}", self.name, self.log_file().display())
    }

    /// Polls `done` every 50 ms until it holds or READY_TIMEOUT passes.
    pub(crate) fn wait_until(&self, mut done: impl FnMut() -> bool, what: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !done() {
            if Instant::now() > deadline {
                bail!(
                    "{} (port {}) not {what} after {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    fn pg_ctl(&self) -> Command {
        self.tools.server_cmd("pg_ctl", &self.socket_dir)
    }

    fn stop_cmd(&self, mode: &str) -> Command {
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "-m", mode, "-w", "-t"])
            .arg(READY_TIMEOUT.as_secs().to_string())
            .arg("-D")
            .arg(&self.data_dir);
        cmd
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
