//! What the proxy knows of the primary's flushed WAL. A commit position past the flush
//! position (synchronous_commit off) reaches no replica until the primary flushes it,
//! so a read that needs it goes to the primary at once: waiting for a replica cannot
//! pay before the flush, which the WAL writer does only every wal_writer_delay.

use super::clock::UNREACHABLE;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct FlushWatch {
    /// The highest flush position the primary reported.
    flushed: AtomicU64,
    /// The highest commit position recorded while it was past the flush position.
    unflushed_up_to: AtomicU64,
}

impl FlushWatch {
    /// A reading of the primary's positions (`flush`), and the position recorded for
    /// the commits that waited for it (the insert position when they may be unflushed).
    pub fn saw(&self, flush: u64, recorded: u64) {
        self.flushed.fetch_max(flush, Ordering::Relaxed);
        if recorded > flush {
            self.unflushed_up_to.fetch_max(recorded, Ordering::Relaxed);
        }
    }

    /// Whether `position` is one recorded past the flush position, and no flush known
    /// since covers it: no replica can have replayed it yet. A position the proxy does
    /// not know to be unflushed (another proxy's, a flushed one) says no: the read may
    /// wait for a replica as usual.
    pub fn unflushed(&self, position: u64) -> bool {
        position != UNREACHABLE
            && position > self.flushed.load(Ordering::Relaxed)
            && position <= self.unflushed_up_to.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positions_known_to_be_past_the_flush_skip_the_wait() {
        let w = FlushWatch::default();
        // Nothing known: every read may wait as before.
        assert!(!w.unflushed(10));
        // synchronous_commit on: the recorded position is the flush position.
        w.saw(100, 100);
        assert!(!w.unflushed(100) && !w.unflushed(150));
        // Off: recorded at insert 180 while the primary had flushed 120.
        w.saw(120, 180);
        // (position, unflushed)
        for (pos, want) in [(110, false), (121, true), (180, true), (181, false)] {
            assert_eq!(w.unflushed(pos), want, "{pos}");
        }
        // A later reading shows the flush past it.
        w.saw(200, 200);
        assert!(!w.unflushed(180));
        assert!(!w.unflushed(UNREACHABLE));
    }
}
