//! Whether waiting for a replica can pay: from each replica's last sampled position and
//! its measured replay rate, whether one has (or will within a small budget) replayed
//! the position a read needs. Otherwise the primary answers sooner than any wait.

use super::clock::UNREACHABLE;

/// What the monitor last saw of a replica's replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// The replayed position at the sample.
    pub position: u64,
    /// When it was sampled (ms since the UNIX epoch; 0: never).
    pub sampled_at_ms: u64,
    /// How fast its position moved between recent samples (position units per ms).
    pub per_ms: u64,
}

/// Estimated µs until `r` has replayed `needed` (0: it probably has already); None
/// when it cannot be told (no sample, no progress, an unreachable position).
pub fn eta_us(r: Replay, needed: u64, now_ms: u64) -> Option<u64> {
    if needed == UNREACHABLE || r.sampled_at_ms == 0 {
        return None;
    }
    if r.position >= needed {
        return Some(0);
    }
    if r.per_ms == 0 {
        return None;
    }
    let since_ms = now_ms.saturating_sub(r.sampled_at_ms);
    let now = r.position.saturating_add(r.per_ms.saturating_mul(since_ms));
    if now >= needed {
        return Some(0);
    }
    Some((needed - now).saturating_mul(1000) / r.per_ms)
}

/// Whether some replica is estimated to have `needed` within `budget_us`.
pub fn wait_pays(
    replicas: impl IntoIterator<Item = Replay>,
    needed: u64,
    now_ms: u64,
    budget_us: u64,
) -> bool {
    replicas
        .into_iter()
        .any(|r| eta_us(r, needed, now_ms).is_some_and(|eta| eta <= budget_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_pays_only_for_a_replica_about_to_have_the_position() {
        let r = |position, sampled_at_ms, per_ms| Replay {
            position,
            sampled_at_ms,
            per_ms,
        };
        // (replay, needed, now, eta)
        let cases: &[(Replay, u64, u64, Option<u64>)] = &[
            (r(500, 1000, 10), 400, 1000, Some(0)),
            // 100 units behind at the sample, 10 per ms, sampled 5 ms ago: 50 behind now.
            (r(400, 995, 10), 500, 1000, Some(5000)),
            // Sampled 20 ms ago: it has passed it since.
            (r(400, 980, 10), 500, 1000, Some(0)),
            // Paused (no progress): cannot be told.
            (r(400, 995, 0), 500, 1000, None),
            (r(400, 0, 10), 500, 1000, None),
            (r(400, 995, 10), UNREACHABLE, 1000, None),
        ];
        for &(replay, needed, now, want) in cases {
            assert_eq!(eta_us(replay, needed, now), want, "{replay:?} {needed}");
        }
        let paused = r(400, 995, 0);
        let busy = r(400, 995, 10);
        assert!(!wait_pays([paused, busy], 500, 1000, 200));
        assert!(wait_pays([paused, busy], 500, 1000, 5000));
        assert!(!wait_pays([], 500, 1000, 5000));
    }
}
