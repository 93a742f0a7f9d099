//! Cancel requests: the proxy hands each client its own key, and maps it to the server
//! connection running that client's query right now, or to the session itself while
//! its read is on a shared lane or its request waits for a server connection.

use crate::backend::ServerAddr;
use crate::protocol::to_server;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub enum CancelTarget {
    Server {
        addr: ServerAddr,
        pid: i32,
        secret: i32,
    },
    /// The session answers the cancel itself: its read is on a shared lane (the server
    /// runs other clients' reads too), or its request still waits for a server
    /// connection. Either way there is no effect to undo.
    Session(Arc<Notify>),
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
                Some((s, slot)) if *s == secret => slot.lock().expect("cancel slot lock").clone(),
                _ => None,
            }
        };
        let (addr, pid, secret) = match target {
            Some(CancelTarget::Server { addr, pid, secret }) => (addr, pid, secret),
            Some(CancelTarget::Session(waiting)) => {
                waiting.notify_one();
                metrics::counter!("pgwarden_cancel_requests_total").increment(1);
                return;
            }
            None => {
                tracing::debug!(pid, "cancel request for an unknown or idle client ignored");
                return;
            }
        };
        match addr
            .send_once(&to_server::cancel_request(pid, secret))
            .await
        {
            Ok(()) => metrics::counter!("pgwarden_cancel_requests_total").increment(1),
            Err(e) => tracing::warn!(addr = %addr, error = %e, "cannot forward cancel request"),
        }
    }
}
