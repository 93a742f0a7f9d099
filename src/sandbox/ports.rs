//! Picks TCP ports for test servers: below the kernel's ephemeral range (32768–60999), where a
//! listener can lose its port to an outgoing client socket, and never the same port twice.

use rand::Rng;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Where test servers live: clear of well-known services and of the ephemeral range.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Ports this process already handed out. An exception to the no-global-state rule, on
/// purpose: a port chosen for one server is free until that server binds it, so two
/// harnesses in the same test process would otherwise race for it. It only ever grows, holds
/// a few hundred entries at most, and changes nothing but which port is picked next.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port in 20000..32000 that nothing listens on right now and that this process has not
/// handed out before. Other processes can still take it before the caller binds it, so
/// servers started on it should retry with a new port when the bind fails.
pub fn free_port() -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let port = rng.gen_range(PORT_RANGE);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        // Test the port while holding the lock so two threads can't both pass it.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free TCP port in {PORT_RANGE:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_in_range_and_distinct() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(ports.iter().all(|p| PORT_RANGE.contains(p)));
    }
}
