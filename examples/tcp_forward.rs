//! A proxy that does nothing: each client connection gets its own server connection and
//! bytes are copied both ways. The pgbench comparison runs it as the floor any TCP proxy
//! pays on the machine (two more loopback hops), whatever it does with the messages.
//!
//! Usage: tcp_forward LISTEN_PORT TARGET [WORKER_THREADS]
//! TARGET is host:port, or the path of a server's Unix socket (starting with `/`).

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream, UnixStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || std::io::Error::other("usage: tcp_forward LISTEN_PORT TARGET [THREADS]");
    let port: u16 = args.next().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    let target = args.next().ok_or_else(usage)?;
    // One thread by default, as pgwarden picks on a machine with two cores.
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_io()
        .build()?
        .block_on(serve(port, target))
}

async fn serve(port: u16, target: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &target).await {
                eprintln!("tcp_forward: {e}");
            }
        });
    }
}

async fn forward(mut client: TcpStream, target: &str) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    if target.starts_with('/') {
        let mut server = UnixStream::connect(target).await?;
        copy_bidirectional(&mut client, &mut server).await?;
    } else {
        let mut server = TcpStream::connect(target).await?;
        server.set_nodelay(true)?;
        copy_bidirectional(&mut client, &mut server).await?;
    }
    Ok(())
}
