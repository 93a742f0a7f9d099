//! The session clock: per-table positions, captures in flight, failed captures.

use super::*;

fn reading<'a>(tables: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
    move |t| tables.iter().any(|r| r.eq_ignore_ascii_case(t))
}

fn pos(clock: &SessionClock, tables: &[&str]) -> u64 {
    clock.position(Reads::Tables(&reading(tables)), 1000)
}

fn commit(clock: &Arc<SessionClock>, tables: Option<&[&str]>, at: u64) {
    let tables: Option<Vec<String>> = tables.map(|ts| ts.iter().map(|t| t.to_string()).collect());
    let mut f = InFlight::new(clock.clone(), tables.as_deref());
    f.settle(at);
}

#[test]
fn a_read_needs_only_the_commits_that_could_have_changed_its_tables() {
    let clock = Arc::new(SessionClock::default());
    assert_eq!(pos(&clock, &["t_cold"]), 0);
    commit(&clock, Some(&["t_hot", "V_hot"]), 42);
    assert_eq!(pos(&clock, &["t_cold"]), 0);
    assert_eq!(pos(&clock, &["t_hot"]), 42);
    assert_eq!(pos(&clock, &["v_hot", "t_cold"]), 42);
    assert_eq!(clock.position(Reads::Any, 1000), 42);
    // Positions only move forward.
    commit(&clock, Some(&["t_hot"]), 7);
    assert_eq!(pos(&clock, &["t_hot"]), 42);
    // A commit whose tables are unknown bounds every read.
    commit(&clock, None, 50);
    assert_eq!(pos(&clock, &["t_cold"]), 50);
    assert_eq!(pos(&clock, &[]), 50);
}

#[test]
fn a_capture_in_flight_blocks_only_the_reads_of_its_tables() {
    let clock = Arc::new(SessionClock::default());
    let mut f = InFlight::new(clock.clone(), Some(&["t_hot".to_string()]));
    assert_eq!(pos(&clock, &["t_hot"]), UNREACHABLE);
    assert_eq!(pos(&clock, &["t_cold"]), 0);
    assert_eq!(clock.position(Reads::Any, 1000), UNREACHABLE);
    // A pipelined commit of unknown tables joins it: now every read waits.
    f.widen(None);
    assert_eq!(pos(&clock, &["t_cold"]), UNREACHABLE);
    f.settle(9);
    drop(f);
    assert_eq!(pos(&clock, &["t_cold"]), 9);
}

#[test]
fn a_capture_dropped_without_a_position_sends_reads_to_the_primary_for_a_while() {
    let clock = Arc::new(SessionClock::default());
    drop(InFlight::new(clock.clone(), Some(&["t".to_string()])));
    assert_eq!(clock.position(Reads::Any, 60_000), UNREACHABLE);
    assert_eq!(pos(&clock, &["other"]), UNREACHABLE);
    // Past max_lag_ms any replica within the budget has the write.
    clock.own.lock().unwrap().unknown_since_ms = now_ms() - 2;
    assert_eq!(clock.position(Reads::Any, 1), 0);
}

#[test]
fn many_tables_fold_into_the_whole_session_position() {
    let clock = Arc::new(SessionClock::default());
    for i in 0..=MAX_TABLES as u64 {
        commit(&clock, Some(&[format!("t{i}").as_str()]), 100 + i);
    }
    // The oldest, t0 at 100, now bounds every read.
    assert_eq!(pos(&clock, &["unrelated"]), 100);
    assert_eq!(pos(&clock, &["t5"]), 105);
}
