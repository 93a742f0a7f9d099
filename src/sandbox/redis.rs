//! A throwaway redis-server for tests, benchmarks and the sandbox: loopback only, no
//! persistence, files in a temp dir, killed on drop (also when a test panics).

use crate::sandbox::ports::free_port;
use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A new port is tried this many times when another process took the chosen one first.
const START_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled while waiting for the server.
const POLL_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server on 127.0.0.1 and a free port; returns once it answers PING.
    pub fn start() -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-redis-")
            .tempdir_in(std::env::temp_dir())?;
        let mut server = RedisServer {
            port: 0,
            child: None,
            dir,
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) if server.log().contains("Address already in use") => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err
            .expect("at least one attempt")
            .context("no free port for redis-server"))
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (an abrupt outage, as clients see a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a new, empty one on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<()> {
        let log = self.log_path();
        // A fresh log per launch, so a failure is diagnosed from this attempt's lines only.
        let _ = std::fs::remove_file(&log);
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server (install the Debian package redis-server)")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if answers_ping(self.port) {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                bail!(
                    "redis-server on port {port} exited ({status}): {}",
                    self.log().trim()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}: {}",
                    self.log().trim()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }
}

/// An inline PING answered with +PONG (not -LOADING or a refused connection).
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    let mut got = 0;
    while got < reply.len() {
        match s.read(&mut reply[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    &reply[..got] == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
