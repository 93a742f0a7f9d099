//! A TCP relay that delivers every chunk a set time after it was read, both ways, to give
//! tests real network latency (the kernel here has no netem).
//!
//! It runs on its own thread with a current-thread tokio runtime, so sync code and async
//! tests (of any runtime flavour) can start and drop it alike.

use crate::sandbox::ports::free_port;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const BIND_ATTEMPTS: usize = 3;
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction; a slow receiver then slows the sender (backpressure)
/// instead of the relay buffering without bound.
const IN_FLIGHT_CHUNKS: usize = 256;

pub struct DelayRelay {
    pub port: u16,
    delay_ns: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DelayRelay {
    /// Listens on 127.0.0.1 and a free port; each accepted connection is relayed to
    /// `target`, every chunk in both directions delivered `one_way_delay` after it was read.
    pub fn start(target: SocketAddr, one_way_delay: Duration) -> Result<DelayRelay> {
        let (listener, port) = bind()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let delay_ns = Arc::new(AtomicU64::new(nanos(one_way_delay)));
        let (stop, stopped) = oneshot::channel();
        let delay = delay_ns.clone();
        let thread = std::thread::Builder::new()
            .name(format!("delay-relay-{port}"))
            // Dropping the runtime at the end of the thread closes every relayed socket.
            .spawn(move || runtime.block_on(accept_loop(listener, target, delay, stopped)))
            .context("cannot start the delay relay thread")?;
        Ok(DelayRelay {
            port,
            delay_ns,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Applies to chunks read from now on; chunks already in flight keep their time, and
    /// order is kept either way.
    pub fn set_delay(&self, one_way_delay: Duration) {
        self.delay_ns.store(nanos(one_way_delay), Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn bind() -> Result<(std::net::TcpListener, u16)> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let port = free_port();
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(l) => return Ok((l, port)),
            // Another process took the port between the check and the bind.
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("at least one attempt")).context("no free port for the delay relay")
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    delay: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, target, delay.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!("delay relay: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn relay(client: TcpStream, target: SocketAddr, delay: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return; // the client sees the connection close, as with an unreachable server
    };
    // Nagle would add its own, unpredictable delay on top of ours.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, delay.clone()),
        pump(server_read, client_write, delay),
    );
}

/// One direction. The reader stamps each chunk with its due time and moves on, so the delay
/// is per chunk rather than cumulative; the writer delivers chunks in order when due.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_nanos(delay.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping tx ends the writer once it has delivered what is in flight.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Pass the half-close on, after the delayed data, as the peer sent it.
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
