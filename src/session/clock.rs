//! A session's read-your-writes position: the last commit position it learnt, unknown
//! while a capture of one runs or for a while after one failed.

use crate::consistency::clock::UNREACHABLE;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A session's read-your-writes position, shared with the captures it left running.
#[derive(Default)]
pub struct SessionClock {
    last: AtomicU64,
    /// Captures not finished: until they are, the session's position is unknown.
    in_flight: AtomicUsize,
    /// When (ms since the UNIX epoch) a capture failed; 0: none.
    unknown_since_ms: AtomicU64,
}

impl SessionClock {
    /// The position a replica must have replayed for this session's reads; UNREACHABLE
    /// while a capture runs, and for `max_lag_ms` after one failed (long enough for any
    /// replica within the lag budget to have replayed the write).
    pub fn position(&self, max_lag_ms: u64) -> u64 {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return UNREACHABLE;
        }
        let since = self.unknown_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            if now_ms().saturating_sub(since) <= max_lag_ms {
                return UNREACHABLE;
            }
            self.unknown_since_ms.store(0, Ordering::Relaxed);
        }
        self.last.load(Ordering::Relaxed)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counts a capture as running; dropped without a position (an error path, a lost
/// server), it leaves the session's position unknown rather than wrong.
pub(crate) struct InFlight {
    clock: Arc<SessionClock>,
    position: Option<u64>,
}

impl InFlight {
    pub(crate) fn new(clock: Arc<SessionClock>) -> Self {
        clock.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            clock,
            position: None,
        }
    }

    /// The capture read the commit's position.
    pub(crate) fn settle(&mut self, position: u64) {
        self.position = Some(position);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        match self.position {
            Some(p) => {
                self.clock.last.fetch_max(p, Ordering::Relaxed);
            }
            None => self
                .clock
                .unknown_since_ms
                .store(now_ms(), Ordering::Relaxed),
        }
        self.clock.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_position_is_unknown_while_a_capture_runs() {
        let clock = Arc::new(SessionClock::default());
        assert_eq!(clock.position(1000), 0);
        let mut f = InFlight::new(clock.clone());
        assert_eq!(clock.position(1000), UNREACHABLE);
        f.position = Some(42);
        drop(f);
        assert_eq!(clock.position(1000), 42);
        // Positions only move forward.
        let mut g = InFlight::new(clock.clone());
        g.position = Some(7);
        drop(g);
        assert_eq!(clock.position(1000), 42);
    }

    #[test]
    fn a_capture_dropped_without_a_position_sends_reads_to_the_primary_for_a_while() {
        let clock = Arc::new(SessionClock::default());
        drop(InFlight::new(clock.clone()));
        assert_eq!(clock.position(60_000), UNREACHABLE);
        // Past max_lag_ms any replica within the budget has the write.
        clock
            .unknown_since_ms
            .store(now_ms() - 2, Ordering::Relaxed);
        assert_eq!(clock.position(1), 0);
    }
}
