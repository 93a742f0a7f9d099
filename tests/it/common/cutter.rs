//! A TCP relay between the proxy and one server that can drop the connections it carries
//! at a chosen moment: the race a pool's idle check cannot see, on demand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Cutter {
    pub port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Connections get numbers from 1 in the order they open.
    opened: AtomicU64,
    /// Connections numbered up to this are dropped when the proxy next sends on them.
    doomed_up_to: AtomicU64,
    /// Connections dropped so far.
    cut: AtomicU64,
}

impl Cutter {
    /// Relays every connection made to `port` to 127.0.0.1:`upstream`. Called inside a
    /// tokio runtime (not async, so a config edit can call it).
    pub fn start(upstream: u16) -> Cutter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cutter binds");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let port = listener.local_addr().expect("cutter address").port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = shared.opened.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(relay(client, upstream, id, shared.clone()));
            }
        });
        Cutter {
            port,
            state,
            accept,
        }
    }

    /// Every connection open now is closed, both ways, the next time the proxy sends on
    /// it, and what it sent never reaches the server. Connections opened later pass.
    pub fn cut_open_connections_on_next_send(&self) {
        let opened = self.state.opened.load(Ordering::SeqCst);
        self.state.doomed_up_to.store(opened, Ordering::SeqCst);
    }

    pub fn cut(&self) -> u64 {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, upstream: u16, id: u64, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if id <= state.doomed_up_to.load(Ordering::SeqCst) {
            state.cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Dropping every half closes both sockets: the proxy reads end of file, and the
    // server's backend exits.
    back.abort();
}
