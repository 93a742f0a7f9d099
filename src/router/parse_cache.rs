//! Bounded, sharded cache of query analyses keyed by fingerprint, so a query repeated with
//! other literal values is parsed only once (an OLTP parse costs ~5 µs, a hit ~0.2 µs).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::analysis::{analyze, Analysis};
use super::fingerprint::fingerprint;
use metrics::Counter;

/// Enough shards that client tasks on different cores rarely meet on one lock (fewer for a
/// tiny capacity, so that every shard can hold something).
const MAX_SHARDS: usize = 16;

const HITS: &str = "pgwarden_parse_cache_hits_total";
const MISSES: &str = "pgwarden_parse_cache_misses_total";
const UNPARSABLE: &str = "pgwarden_unparsable_queries_total";

pub struct ParseCache {
    shards: Box<[Mutex<Shard>]>,
    /// Registered once (with the recorder installed first): no registry lookup per query.
    hits: Counter,
    misses: Counter,
    unparsable: Counter,
    extra_write_functions: Vec<String>,
    capacity: usize,
}

struct Shard {
    map: HashMap<u64, Arc<Analysis>, KeyedMix>,
    /// Keys in insertion order; the oldest is evicted when the shard is full (O(1), and
    /// entries are never removed otherwise, so the queue and the map stay in step).
    order: VecDeque<u64>,
    capacity: usize,
}

impl Shard {
    /// Inserts unless another thread got there first; returns the entry now cached.
    fn insert(&mut self, key: u64, value: Arc<Analysis>) -> Arc<Analysis> {
        if let Some(existing) = self.map.get(&key) {
            return existing.clone();
        }
        if self.capacity == 0 {
            return value;
        }
        if self.map.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
        self.order.push_back(key);
        self.map.insert(key, value.clone());
        value
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // The shard holds plain data that is consistent after every statement; a panic elsewhere
    // while holding the lock must not disable the cache.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ParseCache {
    /// A cache holding at most `capacity` analyses (0 disables caching).
    /// `extra_write_functions` is passed to every `analyze` call.
    pub fn new(capacity: usize, extra_write_functions: Vec<String>) -> Self {
        let mix = KeyedMix::new();
        let n = capacity.clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|i| {
                // Spread the capacity exactly: the shard capacities sum to `capacity`.
                let cap = capacity / n + usize::from(i < capacity % n);
                Mutex::new(Shard {
                    map: HashMap::with_capacity_and_hasher(cap, mix.clone()),
                    order: VecDeque::with_capacity(cap),
                    capacity: cap,
                })
            })
            .collect();
        ParseCache {
            shards,
            hits: metrics::counter!(HITS),
            misses: metrics::counter!(MISSES),
            unparsable: metrics::counter!(UNPARSABLE),
            extra_write_functions,
            capacity,
        }
    }

    /// The analysis of `sql`, from the cache when a query with the same fingerprint was seen.
    /// Analyses containing a SET are not cached: their value is a literal, which the
    /// fingerprint ignores.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        self.analyze_keyed(fingerprint(sql), sql)
    }

    /// `analyze` for a caller that has the fingerprint of `sql` already (`key`).
    pub fn analyze_keyed(&self, key: u64, sql: &str) -> Arc<Analysis> {
        let shard = &self.shards[(key >> 32) as usize % self.shards.len()];
        let hit = lock(shard).map.get(&key).cloned();
        if let Some(a) = hit {
            self.hits.increment(1);
            if a.parse_failed {
                self.unparsable.increment(1);
            }
            return a;
        }
        self.misses.increment(1);
        let a = Arc::new(analyze(sql, &self.extra_write_functions));
        if a.parse_failed {
            self.unparsable.increment(1);
        }
        if a.statements.iter().any(|s| s.set.is_some()) {
            return a;
        }
        lock(shard).insert(key, a)
    }

    /// Number of cached analyses.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Hashes an already-hashed fingerprint cheaply. The fingerprint hash has fixed keys, so a
/// client could craft queries whose fingerprints collide in the bits a map uses; mixing in a
/// random per-cache key with a full-avalanche finaliser keeps those collisions from lining up.
#[derive(Clone)]
struct KeyedMix {
    key: u64,
}

impl KeyedMix {
    fn new() -> Self {
        KeyedMix {
            key: RandomState::new().build_hasher().finish(),
        }
    }
}

impl BuildHasher for KeyedMix {
    type Hasher = MixHasher;

    fn build_hasher(&self) -> MixHasher {
        MixHasher {
            key: self.key,
            state: 0,
        }
    }
}

struct MixHasher {
    key: u64,
    state: u64,
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        // murmur3 fmix64: a bijection in which every input bit affects every output bit.
        let mut h = self.state ^ self.key;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = self.state.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::analysis::{StatementKind, TableRef};
    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder};
    use metrics::{SharedString, Unit};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_repeat_with_other_literals_is_a_hit_returning_the_same_arc() {
        let cache = ParseCache::new(100, vec![]);
        let a = cache.analyze("SELECT * FROM t WHERE id = 1");
        let b = cache.analyze("select *  from T where id = 2 -- again");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
        assert_eq!(a.statements[0].reads, vec![TableRef::new(None, "t")]);
        let c = cache.analyze("SELECT * FROM u WHERE id = 1");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn set_statements_are_parsed_every_time() {
        let cache = ParseCache::new(100, vec![]);
        let a = cache.analyze("SET statement_timeout = 1000");
        let b = cache.analyze("SET statement_timeout = 2000");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 0);
        let value = |a: &Analysis| match &a.statements[0].set {
            Some(crate::router::analysis::SetStmt::Set { value, .. }) => value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(&a), "1000");
        assert_eq!(value(&b), "2000");
        cache.analyze("SELECT 1; SET x = 1");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn extra_write_functions_are_used() {
        let cache = ParseCache::new(10, vec!["audit_write".into()]);
        assert!(cache.analyze("SELECT audit_write(1)").is_write());
        assert!(!cache.analyze("SELECT audit_read(1)").is_write());
    }

    #[test]
    fn capacity_is_respected() {
        for capacity in [0, 1, 5, 16, 40] {
            let cache = ParseCache::new(capacity, vec![]);
            for i in 0..500 {
                cache.analyze(&format!("SELECT * FROM t{i}"));
                assert!(cache.len() <= capacity, "capacity {capacity}");
            }
            assert_eq!(cache.capacity(), capacity);
            // Every shard fills up with 500 distinct queries.
            assert_eq!(cache.len(), capacity);
        }
        // The newest entries survive eviction.
        let cache = ParseCache::new(16, vec![]);
        for i in 0..100 {
            cache.analyze(&format!("SELECT * FROM t{i}"));
        }
        let last = cache.analyze("SELECT * FROM t99");
        assert!(Arc::ptr_eq(&last, &cache.analyze("SELECT * FROM t99")));
    }

    #[test]
    fn concurrent_use_from_four_threads() {
        let cache = Arc::new(ParseCache::new(64, vec![]));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..400 {
                        let n = (i * 7 + t) % 40;
                        let sql = format!("SELECT a FROM t{n} WHERE id = {i}");
                        let a = cache.analyze(&sql);
                        assert_eq!(a.statements[0].kind, StatementKind::Select);
                        assert_eq!(
                            a.statements[0].reads,
                            vec![TableRef::new(None, &format!("t{n}"))]
                        );
                        let w = cache.analyze(&format!("UPDATE t{n} SET a = {i}"));
                        assert!(w.is_write());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(cache.len() <= 64);
        assert!(!cache.is_empty());
    }

    /// Counts increments per counter name.
    #[derive(Default)]
    struct Counts(Mutex<HashMap<String, Arc<AtomicU64>>>);

    struct Cell(Arc<AtomicU64>);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Counts {
        fn get(&self, name: &str) -> u64 {
            let map = self.0.lock().unwrap();
            map.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut map = self.0.lock().unwrap();
            let cell = map.entry(key.name().to_string()).or_default().clone();
            Counter::from_arc(Arc::new(Cell(cell)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn emits_hit_miss_and_unparsable_counters() {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, || {
            let cache = ParseCache::new(10, vec![]);
            cache.analyze("SELECT 1");
            cache.analyze("SELECT 2");
            cache.analyze("this is not sql");
            cache.analyze("this is not sql");
        });
        assert_eq!(counts.get(HITS), 2);
        assert_eq!(counts.get(MISSES), 2);
        assert_eq!(counts.get(UNPARSABLE), 2);
    }
}
