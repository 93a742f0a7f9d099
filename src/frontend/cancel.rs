//! Cancel requests: the proxy hands each client its own key, and maps it to the server
//! connection running that client's query right now.

use crate::protocol::messages;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Copy, Debug)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// A client's slot: it writes its current server here; the registry reads it on cancel.
/// Each client locks only its own slot, so the hot path never contends on the map.
pub type CancelSlot = Arc<Mutex<Option<CancelTarget>>>;

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, CancelSlot)>>,
}

impl CancelRegistry {
    /// Allocates a (pid, secret) key for a new client.
    pub fn register(&self) -> (i32, i32, CancelSlot) {
        let slot: CancelSlot = Arc::new(Mutex::new(None));
        let mut map = self.map.lock().expect("cancel map lock");
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !map.contains_key(&pid) {
                let secret = rand::random::<i32>();
                map.insert(pid, (secret, slot.clone()));
                return (pid, secret, slot);
            }
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.map.lock().expect("cancel map lock").remove(&pid);
    }

    /// Forwards a cancel to the server the client is using, if the key matches.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let map = self.map.lock().expect("cancel map lock");
            match map.get(&pid) {
                Some((s, slot)) if *s == secret => *slot.lock().expect("cancel slot lock"),
                _ => None,
            }
        };
        let Some(t) = target else {
            tracing::debug!(pid, "cancel request for an unknown or idle client ignored");
            return;
        };
        match tokio::net::TcpStream::connect(t.addr).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(&messages::cancel_request(t.pid, t.secret))
                    .await;
                metrics::counter!("pgwarden_cancel_requests_total").increment(1);
            }
            Err(e) => tracing::warn!(addr = %t.addr, error = %e, "cannot forward cancel request"),
        }
    }
}
