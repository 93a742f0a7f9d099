//! Where a server listens: a TCP address, or a Unix-domain socket when the configured host
//! is a directory (a host starting with `/`, as libpq reads `host=/var/run/postgresql`).

use crate::config::is_socket_dir;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The socket PostgreSQL listens on for `port` in directory `host`, when `host` names a
/// directory rather than a network host.
pub fn unix_socket_path(host: &str, port: u16) -> Option<PathBuf> {
    is_socket_dir(host).then(|| Path::new(host).join(format!(".s.PGSQL.{port}")))
}

/// A connected server's address, kept to send it cancel requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl ServerAddr {
    /// Opens a new connection to the server and writes `bytes` on it (a CancelRequest:
    /// PostgreSQL reads it from a connection of its own and answers nothing).
    pub async fn send_once(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ServerAddr::Tcp(addr) => {
                tokio::net::TcpStream::connect(addr)
                    .await?
                    .write_all(bytes)
                    .await
            }
            ServerAddr::Unix(path) => {
                tokio::net::UnixStream::connect(path)
                    .await?
                    .write_all(bytes)
                    .await
            }
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(addr) => addr.fmt(f),
            ServerAddr::Unix(path) => path.display().fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_host_names_postgres_socket_file() {
        assert_eq!(
            unix_socket_path("/var/run/postgresql", 5433),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(unix_socket_path("db.internal", 5432), None);
        assert_eq!(unix_socket_path("127.0.0.1", 5432), None);
    }
}
