//! Finds the PostgreSQL binaries (highest version wins) and builds their commands. PostgreSQL
//! refuses to run as root, so when we are root the server tools run as the `postgres` user.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Tools every cluster needs; a directory missing one of them is not a candidate.
const SERVER_TOOLS: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];

/// Inherited PG* variables would silently redirect psql or pg_ctl to some other server.
const SCRUBBED_ENV: [&str; 12] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATA",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
];

/// Which uid/gid the server processes run as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// One PostgreSQL installation and the user its server processes run as.
#[derive(Debug)]
pub(crate) struct PgTools {
    pub bin_dir: PathBuf,
    pub major: u32,
    run_as: Option<RunAs>,
}

impl PgTools {
    /// `$PGWARDEN_PG_BINDIR` if set, else the highest version found in PATH and
    /// /usr/lib/postgresql/*/bin.
    pub fn discover() -> Result<PgTools> {
        let candidates: Vec<PathBuf> = match std::env::var_os("PGWARDEN_PG_BINDIR") {
            Some(dir) => vec![PathBuf::from(dir)],
            None => candidate_dirs(),
        };
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        for dir in candidates {
            if !SERVER_TOOLS.iter().all(|t| dir.join(t).is_file()) {
                continue;
            }
            let Ok(version) = version_of(&dir) else {
                continue;
            };
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, dir));
            }
        }
        let Some((version, bin_dir)) = best else {
            bail!("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, postgres) in PATH or /usr/lib/postgresql/*/bin; set PGWARDEN_PG_BINDIR");
        };
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user("postgres")?)
        } else {
            None
        };
        tracing::debug!(?bin_dir, ?version, ?run_as, "found PostgreSQL");
        Ok(PgTools {
            bin_dir,
            major: version[0],
            run_as,
        })
    }

    /// A server tool (initdb, pg_ctl, pg_basebackup), run as `postgres` when we are root.
    /// `cwd` must be readable by that user: pg_ctl and initdb complain about a cwd they can't open.
    pub fn server_cmd(&self, tool: &str, cwd: &Path) -> Command {
        let path = self.bin_dir.join(tool);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.current_dir(cwd);
        scrub(&mut cmd);
        cmd
    }

    /// A client tool (psql); clients may run as root, and then reach any socket directory.
    pub fn client_cmd(&self, tool: &str) -> Command {
        let path = self.bin_dir.join(tool);
        let mut cmd = Command::new(if path.is_file() { path } else { tool.into() });
        scrub(&mut cmd);
        // A server that stopped answering must not hang a test forever.
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// Gives `path` to the server user when we are root (data and socket dirs must be theirs).
    pub fn chown(&self, path: &Path) -> Result<()> {
        let Some(RunAs { uid, gid }) = self.run_as else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to postgres", path.display()))
    }
}

/// Runs `cmd` to completion with no stdin; a non-zero exit becomes an error carrying its output.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

fn scrub(cmd: &mut Command) {
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    dirs
}

/// "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> [15, 18].
fn version_of(bin_dir: &Path) -> Result<Vec<u32>> {
    let out = run(Command::new(bin_dir.join("pg_ctl")).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split("(PostgreSQL)")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("unexpected pg_ctl --version output: {text}"))?;
    let parts: Vec<u32> = version
        .split('.')
        .map_while(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    if parts.is_empty() {
        bail!("unexpected pg_ctl --version output: {text}");
    }
    Ok(parts)
}

fn lookup_user(name: &str) -> Result<RunAs> {
    let cname = CString::new(name)?;
    // getpwnam_r, not getpwnam: tests start clusters from several threads at once.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        bail!("running as root, but there is no `{name}` user to run PostgreSQL as");
    }
    Ok(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}
