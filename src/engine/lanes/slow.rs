//! Statements kept off the shared read lanes after running slow on one. A first time
//! only briefly (a pause of the whole machine makes any read look slow once), and
//! twice as long each time it is slow again soon after, up to a minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Statements remembered, at most (the record starts afresh beyond).
const MAX_REMEMBERED: usize = 4096;
/// How long a statement first seen slow stays off lanes...
const FIRST_PENALTY: Duration = Duration::from_secs(1);
/// ...and the longest, however often it is slow (also what a reply too large to hold
/// gets at once: that is the statement's doing, not the machine's).
const MAX_PENALTY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct SlowStatements {
    // Held only to look up or record, never across an await.
    record: Mutex<Record>,
    /// How many statements are off lanes now: while none, reads skip the lock.
    off_now: AtomicUsize,
}

#[derive(Default)]
struct Record {
    /// Off lanes until then.
    off: HashMap<u64, Instant>,
    /// Each statement's last penalty, and when it ended: slow again within MAX_PENALTY
    /// of that, it gets twice as long.
    past: HashMap<u64, (Instant, Duration)>,
}

pub(crate) enum Why {
    /// It ran past the lane's slow threshold.
    Slow,
    /// Its reply outgrew what a lane holds.
    TooBig,
}

impl SlowStatements {
    /// Keeps `key` off lanes from `now`; returns for how long, or None when it is off
    /// already (reads queued behind a slow one are the same episode: nothing changes).
    pub(crate) fn mark(&self, key: u64, why: Why, now: Instant) -> Option<Duration> {
        let mut r = self.record.lock().expect("slow statements lock");
        if r.off.get(&key).is_some_and(|until| now < *until) {
            return None;
        }
        if r.past.len() >= MAX_REMEMBERED {
            r.past.clear();
        }
        if r.off.len() >= MAX_REMEMBERED {
            r.off.clear();
        }
        let penalty = match (why, r.past.get(&key)) {
            (Why::TooBig, _) => MAX_PENALTY,
            (Why::Slow, Some((ended, last))) if now < *ended + MAX_PENALTY => {
                (*last * 2).min(MAX_PENALTY)
            }
            (Why::Slow, _) => FIRST_PENALTY,
        };
        let until = now + penalty;
        r.off.insert(key, until);
        r.past.insert(key, (until, penalty));
        self.off_now.store(r.off.len(), Ordering::Relaxed);
        Some(penalty)
    }

    /// Whether `key` is off lanes at `now`.
    pub(crate) fn is_off(&self, key: u64, now: Instant) -> bool {
        if self.off_now.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut r = self.record.lock().expect("slow statements lock");
        match r.off.get(&key) {
            Some(until) if now < *until => true,
            Some(_) => {
                r.off.remove(&key);
                self.off_now.store(r.off.len(), Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Statements seen slow and still remembered.
    pub(crate) fn remembered(&self) -> usize {
        self.record.lock().expect("slow statements lock").past.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_first_slow_run_keeps_a_statement_off_briefly() {
        let slow = SlowStatements::default();
        let t0 = Instant::now();
        assert!(!slow.is_off(7, t0));
        assert_eq!(slow.mark(7, Why::Slow, t0), Some(FIRST_PENALTY));
        assert!(slow.is_off(7, t0 + s(0.9)));
        assert!(!slow.is_off(8, t0 + s(0.9)), "only that statement");
        assert!(!slow.is_off(7, t0 + s(1.1)));
        assert_eq!(
            slow.off_now.load(Ordering::Relaxed),
            0,
            "reads skip the lock again"
        );
    }

    #[test]
    fn repeats_double_the_penalty_up_to_the_most_and_are_forgiven_later() {
        let slow = SlowStatements::default();
        let mut t = Instant::now();
        let mut want = FIRST_PENALTY;
        for _ in 0..10 {
            assert_eq!(slow.mark(7, Why::Slow, t), Some(want));
            // Marks during the same episode change nothing.
            assert_eq!(slow.mark(7, Why::Slow, t + s(0.5)), None);
            t += want + s(0.1);
            want = (want * 2).min(MAX_PENALTY);
        }
        assert_eq!(want, MAX_PENALTY);
        // Long after its last penalty ended, a statement starts afresh.
        t += MAX_PENALTY + s(1.0);
        assert_eq!(slow.mark(7, Why::Slow, t), Some(FIRST_PENALTY));
    }

    #[test]
    fn a_reply_too_large_keeps_a_statement_off_the_longest_at_once() {
        let slow = SlowStatements::default();
        let t0 = Instant::now();
        assert_eq!(slow.mark(9, Why::TooBig, t0), Some(MAX_PENALTY));
        assert!(slow.is_off(9, t0 + s(59.0)));
        assert_eq!(slow.remembered(), 1);
    }
}
