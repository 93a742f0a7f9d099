//! An initdb'd data directory cached once per machine, PostgreSQL major and user: copying it
//! is several times faster than initdb, which matters when tests start many clusters at once.

use super::tools::{run, PgTools};
use anyhow::{bail, Context, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the settings below change, so templates built by older code are rebuilt.
const FORMAT_MARKER: &str = "# pgwarden-template-format: 3";

/// Settings shared by every node. Durability is traded for speed: these clusters are thrown
/// away. synchronous_commit stays on (PostgreSQL's default; cheap without fsync) so WAL
/// reaches replicas at each commit, as in production, not every wal_writer_delay. The port
/// and socket directory are per cluster and appended later.
const BASE_CONF: &str = "
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = on
full_page_writes = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
max_connections = 200
# Two-phase commit for the tests (replicas need at least the primary's value).
max_prepared_transactions = 10
shared_buffers = 32MB
logging_collector = off
";

/// Superuser and replication are trusted so the harness needs no secrets; every other role
/// must send a real password, because the proxy has to carry real backend authentication.
/// md5user has an md5-stored password, which `scram-sha-256` lines reject, so it gets an
/// `md5` line of its own.
const HBA: &str = "\
local all all trust
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all md5user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

/// Copies the template (building it first if needed) to `dest`, which must not exist.
pub(crate) fn copy_template(tools: &PgTools, dest: &Path) -> Result<()> {
    let template = ensure_template(tools)?;
    // As root, `cp -a` keeps the files owned by postgres.
    run(Command::new("cp").arg("-a").arg(&template).arg(dest))?;
    Ok(())
}

fn ensure_template(tools: &PgTools) -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    let euid = unsafe { libc::geteuid() };
    let name = format!("pgwarden-initdb-template-{}-{euid}", tools.major);
    let template = tmp.join(&name);
    // The rename below is atomic, so a template that validates is complete: no lock needed.
    if is_valid(&template, tools.major) {
        return Ok(template);
    }
    let _lock = lock_exclusive(&tmp.join(format!("{name}.lock")))?;
    if is_valid(&template, tools.major) {
        return Ok(template);
    }
    if template.exists() {
        tracing::debug!(?template, "replacing invalid initdb template");
        fs::remove_dir_all(&template)
            .with_context(|| format!("removing stale {}", template.display()))?;
    }
    let build = tempfile::Builder::new()
        .prefix("pgwarden-initdb-build-")
        .tempdir_in(&tmp)?;
    tools.chown(build.path())?;
    let data = build.path().join("data");
    tracing::debug!(?data, "running initdb for the template");
    run(tools
        .server_cmd("initdb", build.path())
        .args(["-A", "trust", "-U", "postgres", "-N", "--no-instructions"])
        .args(["-E", "UTF8", "--locale=C", "-D"])
        .arg(&data))?;
    // Appending or truncating keeps the files owned by postgres even when we are root.
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?
        .write_all(format!("{BASE_CONF}{FORMAT_MARKER}\n").as_bytes())?;
    fs::write(data.join("pg_hba.conf"), HBA)?;
    fs::rename(&data, &template)
        .with_context(|| format!("moving the template into {}", template.display()))?;
    Ok(template)
}

fn is_valid(template: &Path, major: u32) -> bool {
    let version = fs::read_to_string(template.join("PG_VERSION")).unwrap_or_default();
    let conf = fs::read_to_string(template.join("postgresql.conf")).unwrap_or_default();
    version.trim() == major.to_string()
        && template.join("global/pg_control").is_file()
        && conf.contains(FORMAT_MARKER)
}

/// flock, so parallel test processes wait for one builder; released when the file closes,
/// including when the process dies.
fn lock_exclusive(path: &Path) -> Result<fs::File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    loop {
        // SAFETY: the fd is owned by `file`, which outlives the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("flock {}: {err}", path.display());
        }
    }
}
