//! A session's read-your-writes positions: per table its commits could have changed
//! (see consistency::reach), plus one for commits whose reach the proxy could not tell,
//! which every read needs. Unknown while a capture of one runs, or for a while after
//! one failed.

use crate::consistency::clock::UNREACHABLE;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Tables kept by name; past this the oldest folds into the whole-session position,
/// which only makes the rule stricter.
const MAX_TABLES: usize = 64;

/// A session's read-your-writes positions, shared with the captures it left running.
#[derive(Default)]
pub struct SessionClock {
    /// Set once the session committed a write: until then a read takes no lock.
    wrote: AtomicBool,
    // Taken by the session's reads and by its captures' ends, never across an await.
    own: Mutex<Own>,
}

#[derive(Default)]
struct Own {
    /// The last commit whose tables could not be told: every read needs it.
    whole: u64,
    /// The last commit position by table (lower-cased), for commits whose reach was known.
    tables: Vec<(String, u64)>,
    /// Captures not finished, by id: the tables they wrote (None: any).
    flights: Vec<(u64, Option<Vec<String>>)>,
    next_flight: u64,
    /// When (ms since the UNIX epoch) a capture failed; 0: none.
    unknown_since_ms: u64,
}

/// What a read covers: the tables it reads, or any (it calls what the proxy cannot follow).
#[derive(Clone, Copy)]
pub enum Reads<'a> {
    Tables(&'a dyn Fn(&str) -> bool),
    Any,
}

impl Reads<'_> {
    fn covers(&self, table: &str) -> bool {
        match self {
            Reads::Tables(reads) => reads(table),
            Reads::Any => true,
        }
    }
}

impl SessionClock {
    /// Whether the session committed a write yet (or has one being captured).
    pub fn has_written(&self) -> bool {
        self.wrote.load(Ordering::Acquire)
    }

    /// The position a replica must have replayed for a read of `reads`: the session's
    /// last commit that could have changed one of them. UNREACHABLE while a capture of
    /// such a commit runs, and for `max_lag_ms` after one failed (long enough for any
    /// replica within the lag budget to have replayed the write).
    pub fn position(&self, reads: Reads<'_>, max_lag_ms: u64) -> u64 {
        if !self.wrote.load(Ordering::Acquire) {
            return 0;
        }
        let mut own = self.own.lock().expect("session clock lock");
        if own.unknown_since_ms != 0 {
            if now_ms().saturating_sub(own.unknown_since_ms) <= max_lag_ms {
                return UNREACHABLE;
            }
            own.unknown_since_ms = 0;
        }
        let in_flight = own.flights.iter().any(|(_, tables)| match tables {
            None => true,
            Some(ts) => ts.iter().any(|t| reads.covers(t)),
        });
        if in_flight {
            return UNREACHABLE;
        }
        let tables = own.tables.iter().filter(|(t, _)| reads.covers(t));
        tables.map(|(_, p)| *p).fold(own.whole, u64::max)
    }
}

impl Own {
    fn record(&mut self, tables: Option<&[String]>, position: u64) {
        let own = self;
        let Some(tables) = tables else {
            own.whole = own.whole.max(position);
            return;
        };
        for t in tables {
            match own.tables.iter_mut().find(|(n, _)| n == t) {
                Some((_, p)) => *p = (*p).max(position),
                None => own.tables.push((t.clone(), position)),
            }
        }
        if own.tables.len() > MAX_TABLES {
            let (_, oldest) = own.tables.remove(0);
            own.whole = own.whole.max(oldest);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counts a capture as running for the tables it wrote; dropped without a position (an
/// error path, a lost server), it leaves the session's position unknown, not wrong.
pub(crate) struct InFlight {
    clock: Arc<SessionClock>,
    id: u64,
    position: Option<u64>,
}

fn lower(tables: Option<&[String]>) -> Option<Vec<String>> {
    tables.map(|ts| ts.iter().map(|t| t.to_lowercase()).collect())
}

impl InFlight {
    /// A capture of a commit that wrote `tables` (None: tables it could not tell).
    pub(crate) fn new(clock: Arc<SessionClock>, tables: Option<&[String]>) -> Self {
        let id = {
            let mut own = clock.own.lock().expect("session clock lock");
            own.next_flight += 1;
            let id = own.next_flight;
            own.flights.push((id, lower(tables)));
            id
        };
        clock.wrote.store(true, Ordering::Release);
        InFlight {
            clock,
            id,
            position: None,
        }
    }

    /// Another commit joins this capture (pipelined commits share one reading).
    pub(crate) fn widen(&mut self, tables: Option<&[String]>) {
        let mut own = self.clock.own.lock().expect("session clock lock");
        let Some((_, mine)) = own.flights.iter_mut().find(|(id, _)| *id == self.id) else {
            return;
        };
        match (mine.as_mut(), lower(tables)) {
            (Some(ts), Some(more)) => ts.extend(more),
            _ => *mine = None,
        }
    }

    /// The capture read the commit's position.
    pub(crate) fn settle(&mut self, position: u64) {
        self.position = Some(position);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // One lock for both: a read in between must see the flight or its position.
        let mut own = self.clock.own.lock().expect("session clock lock");
        let i = own.flights.iter().position(|(id, _)| *id == self.id);
        let tables = i.map(|i| own.flights.swap_remove(i).1);
        match (self.position, tables) {
            (Some(p), Some(tables)) => own.record(tables.as_deref(), p),
            _ => own.unknown_since_ms = now_ms(),
        }
    }
}

#[cfg(test)]
mod tests;
