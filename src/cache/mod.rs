//! The result cache (DESIGN §3.4): replies to safe reads kept in process (L1, moka,
//! weighed in bytes), each valid only while none of the tables it read has changed
//! since its fill began (the table clock's stamps) and its TTL lasts. What is safe and
//! for how long is `policy`; the key is `key`; what reply may be kept is `reply`.

pub mod key;
pub mod policy;
pub mod reply;

use crate::config::CacheConfig;
use crate::consistency::clock::TableClock;
use bytes::Bytes;
use key::Key;
use metrics::{Counter, Gauge};
use policy::{NoCache, Rules};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One kept reply.
pub struct Entry {
    pub reply: Bytes,
    db: Box<str>,
    /// What it read (lower-cased, with CATALOG and OPAQUE).
    tables: Box<[String]>,
    /// The table clock's stamp when its fill was planned.
    stamp: u64,
    /// The fleet bus's period when filled (0 without a bus).
    period: u64,
    expires: Instant,
}

/// A fill in progress: what becomes an Entry once the reply is complete and checked.
pub struct Fill {
    pub key: Key,
    pub db: String,
    pub tables: Vec<String>,
    pub stamp: u64,
    /// The fleet bus's period when it began (0 without a bus).
    pub period: u64,
    pub ttl: Duration,
    /// The reply as the client got it, while it fits.
    pub reply: bytes::BytesMut,
    /// Why it cannot be kept, once known (the reply outgrew the limit, the client
    /// pipelined another request).
    pub spoiled: Option<Refused>,
}

/// Why a complete fill was not kept (pgwarden_cache_refused_fills_total{reason}).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An error, a notice, or anything but rows and tags.
    Reply,
    TooBig,
    /// A table it read changed while it ran: it may already be out of date.
    Changed,
    /// The client sent another request before this one's reply was complete.
    Pipelined,
    /// The fleet bus went down meanwhile: an invalidation may have been missed.
    ChannelDown,
}

impl Refused {
    const ALL: [Refused; 5] = [
        Refused::Reply,
        Refused::TooBig,
        Refused::Changed,
        Refused::Pipelined,
        Refused::ChannelDown,
    ];

    fn label(self) -> &'static str {
        match self {
            Refused::Reply => "reply",
            Refused::TooBig => "too_big",
            Refused::Changed => "changed",
            Refused::Pipelined => "pipelined",
            Refused::ChannelDown => "channel_down",
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    Hit(Bytes),
    /// Not there (or no longer true): fill it.
    Miss,
}

/// What this proxy's cache has done, read back by tests and (later) the console: the
/// `metrics` facade cannot be read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub fills: u64,
    pub refused: u64,
    pub invalidated: u64,
}

#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    fills: AtomicU64,
    refused: AtomicU64,
    invalidated: AtomicU64,
}

struct Counters {
    tally: Tally,
    hits_l1: Counter,
    /// By NoCache::ALL.
    skipped: Vec<Counter>,
    absent: Counter,
    invalidated: Counter,
    expired: Counter,
    channel_down: Counter,
    fills: Counter,
    refused: Vec<Counter>,
    evictions: Counter,
    entries: Gauge,
    bytes: Gauge,
}

impl Counters {
    fn register() -> Counters {
        let miss = |reason: &'static str| metrics::counter!("pgwarden_cache_misses_total", "reason" => reason);
        Counters {
            tally: Tally::default(),
            hits_l1: metrics::counter!("pgwarden_cache_hits_total", "level" => "l1"),
            skipped: NoCache::ALL.iter().map(|r| miss(r.label())).collect(),
            absent: miss("absent"),
            invalidated: miss("invalidated"),
            expired: miss("expired"),
            channel_down: miss("channel_down"),
            fills: metrics::counter!("pgwarden_cache_fills_total"),
            refused: Refused::ALL
                .iter()
                .map(|r| {
                    metrics::counter!("pgwarden_cache_refused_fills_total", "reason" => r.label())
                })
                .collect(),
            evictions: metrics::counter!("pgwarden_cache_evictions_total"),
            entries: metrics::gauge!("pgwarden_cache_entries"),
            bytes: metrics::gauge!("pgwarden_cache_bytes"),
        }
    }
}

pub struct Cache {
    pub rules: Rules,
    max_entry_bytes: usize,
    l1: moka::sync::Cache<Key, Arc<Entry>>,
    counters: Arc<Counters>,
}

impl Cache {
    /// The cache of this config; None when `cache.mode` is off.
    pub fn new(c: &CacheConfig) -> Option<Cache> {
        let rules = Rules::new(c);
        if !rules.enabled() {
            return None;
        }
        let counters = Arc::new(Counters::register());
        let evicted = counters.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(c.l1_max_bytes)
            .weigher(|_, e: &Arc<Entry>| {
                let size = e.reply.len() + e.tables.iter().map(String::len).sum::<usize>() + 128;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.evictions.increment(1);
                }
            })
            .build();
        Some(Cache {
            rules,
            max_entry_bytes: c.max_entry_bytes,
            l1,
            counters,
        })
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// A read the policy turned down.
    pub fn skipped(&self, why: NoCache) {
        self.counters.skipped[why as usize].increment(1);
    }

    /// The fleet bus is down: nothing is served or kept until it is back.
    pub fn channel_down(&self) {
        self.counters.channel_down.increment(1);
    }

    /// The kept reply of `key`, if it is still true. `period` is the fleet bus's now.
    pub fn get(&self, key: &Key, clock: &TableClock, period: u64) -> Lookup {
        let Some(e) = self.l1.get(key) else {
            self.counters.absent.increment(1);
            return Lookup::Miss;
        };
        if e.expires <= Instant::now() {
            self.l1.invalidate(key);
            self.counters.expired.increment(1);
            return Lookup::Miss;
        }
        let tables = e.tables.iter().map(String::as_str);
        if e.period != period || !clock.unchanged_since(&e.db, tables, e.stamp) {
            self.l1.invalidate(key);
            self.counters.invalidated.increment(1);
            self.counters.tally.invalidated.fetch_add(1, Relaxed);
            return Lookup::Miss;
        }
        self.counters.hits_l1.increment(1);
        self.counters.tally.hits.fetch_add(1, Relaxed);
        Lookup::Hit(e.reply.clone())
    }

    /// Keeps a complete fill, unless its reply cannot be replayed or a table it read
    /// changed meanwhile.
    /// `period` is the fleet bus's now (None: down).
    pub fn finish(&self, fill: Fill, clock: &TableClock, period: Option<u64>) {
        let checked = match period {
            Some(p) if p == fill.period => self.check(&fill, clock),
            _ => Err(Refused::ChannelDown),
        };
        match checked {
            Ok(()) => {
                let entry = Entry {
                    reply: fill.reply.freeze(),
                    db: fill.db.into(),
                    tables: fill.tables.into(),
                    stamp: fill.stamp,
                    period: fill.period,
                    expires: Instant::now() + fill.ttl,
                };
                self.l1.insert(fill.key, Arc::new(entry));
                self.counters.fills.increment(1);
                self.counters.tally.fills.fetch_add(1, Relaxed);
                self.counters.entries.set(self.l1.entry_count() as f64);
                self.counters.bytes.set(self.l1.weighted_size() as f64);
            }
            Err(why) => {
                self.counters.refused[why as usize].increment(1);
                self.counters.tally.refused.fetch_add(1, Relaxed);
            }
        }
    }

    fn check(&self, fill: &Fill, clock: &TableClock) -> Result<(), Refused> {
        if let Some(why) = fill.spoiled {
            return Err(why);
        }
        if fill.reply.len() > self.max_entry_bytes {
            return Err(Refused::TooBig);
        }
        reply::check(&fill.reply)?;
        let tables = fill.tables.iter().map(String::as_str);
        if !clock.unchanged_since(&fill.db, tables, fill.stamp) {
            return Err(Refused::Changed);
        }
        Ok(())
    }

    /// Drops every entry, or those that read `table` (any database).
    pub fn flush(&self, table: Option<&str>) {
        match table {
            None => self.l1.invalidate_all(),
            Some(t) => {
                let t = t.to_lowercase();
                let _ = self
                    .l1
                    .invalidate_entries_if(move |_, e| e.tables.contains(&t));
            }
        }
        self.l1.run_pending_tasks();
        self.counters.entries.set(self.l1.entry_count() as f64);
        self.counters.bytes.set(self.l1.weighted_size() as f64);
    }

    pub fn stats(&self) -> Stats {
        let t = &self.counters.tally;
        Stats {
            hits: t.hits.load(Relaxed),
            fills: t.fills.load(Relaxed),
            refused: t.refused.load(Relaxed),
            invalidated: t.invalidated.load(Relaxed),
        }
    }

    /// Entries kept now (after pending maintenance).
    pub fn entries(&self) -> u64 {
        self.l1.run_pending_tasks();
        self.l1.entry_count()
    }
}

impl Fill {
    /// Appends what went to the client, spoiling the fill once it outgrows `max`.
    pub fn record(&mut self, bytes: &[u8], max: usize) {
        if self.spoiled.is_some() {
            return;
        }
        if self.reply.len() + bytes.len() > max {
            self.spoiled = Some(Refused::TooBig);
            self.reply = bytes::BytesMut::new();
            return;
        }
        self.reply.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_in_declaration_order() {
        for (i, r) in Refused::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn a_fill_outgrowing_the_limit_keeps_nothing() {
        let mut f = Fill {
            key: [0; 32],
            db: "app".into(),
            tables: vec![],
            stamp: 0,
            period: 0,
            ttl: Duration::from_secs(1),
            reply: bytes::BytesMut::new(),
            spoiled: None,
        };
        f.record(b"12345", 8);
        assert_eq!(&f.reply[..], b"12345");
        f.record(b"6789", 8);
        assert_eq!(f.spoiled, Some(Refused::TooBig));
        assert!(f.reply.is_empty());
    }
}
