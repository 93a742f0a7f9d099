//! The table clock: for each (database, table), the commit position of its last write.
//! A read of those tables is safe on a replica that has replayed past the maximum.
//! Schemas are ignored on purpose: same-named tables share a clock, which only ever
//! makes the rule stricter. The pseudo-table CATALOG is each database's catalog clock,
//! kept apart because every read asks for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct TableClock {
    // Reads vastly outnumber writes; the lock is held only for a lookup or an insert.
    map: RwLock<HashMap<String, u64>>,
    /// Tables with commits whose positions are still being read: meanwhile no replica
    /// is safe for them.
    pending: RwLock<HashMap<String, Pending>>,
    /// The catalog clock of each database (the pseudo-table CATALOG), which every read
    /// asks for: a short list scanned under a read lock, without a hash, its entries
    /// atomics.
    catalogs: RwLock<Vec<Arc<CatalogClock>>>,
    /// Every change of a table's clock (a commit acknowledged, a position recorded or
    /// received from the fleet) takes the next stamp: a cache entry filled after stamp
    /// S stays true while none of its tables has a later one.
    stamp: AtomicU64,
    /// The stamp of each (database, table)'s last change, CATALOG and OPAQUE included.
    changed: RwLock<HashMap<String, u64>>,
}

/// One database's catalog clock.
struct CatalogClock {
    db: Box<str>,
    position: AtomicU64,
    /// Commits of the catalog whose positions are not known yet (a hint: the deadline
    /// that lapses them is in `pending`).
    pending_hint: AtomicUsize,
    pending: Mutex<Pending>,
}

/// Commits of one table whose positions are not known yet. Counted: one commit's
/// position says nothing of another's acknowledged after its reading began.
struct Pending {
    commits: usize,
    /// Renewed by each commit; past it, positions that never came are given up on.
    until: Instant,
}

/// The pseudo-table whose clock is a database's catalog clock: advanced by every commit
/// that may change the catalog or write tables the proxy cannot name (see
/// Analysis::changes_catalog), and needed by every read, so an object one connection
/// created is there for the next read of any other. A real table of that name (it would
/// have to be quoted) only shares the clock, which makes the rule stricter, never looser.
pub const CATALOG: &str = "pgwarden:catalog";

/// The pseudo-table of commits whose tables the proxy could not tell (a trigger running
/// dynamic SQL, a writing function, a table its catalog model lacks): every strict read
/// needs it. Session-mode reads have the session's own clock for these.
pub const OPAQUE: &str = "pgwarden:opaque";

/// Position that no replica reaches: "read this from the primary".
pub const UNREACHABLE: u64 = u64::MAX;

fn key(db: &str, table: &str) -> String {
    let mut k = String::with_capacity(db.len() + 1 + table.len());
    k.push_str(db);
    k.push('\u{1f}');
    k.extend(table.chars().map(|c| c.to_ascii_lowercase()));
    k
}

/// Calls `f` with the key of (db, table), built on the stack when it fits: reads look
/// their tables up on every routed request.
fn with_key<R>(db: &str, table: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 128];
    let len = db.len() + 1 + table.len();
    if len > buf.len() {
        return f(&key(db, table));
    }
    buf[..db.len()].copy_from_slice(db.as_bytes());
    buf[db.len()] = 0x1f;
    for (d, s) in buf[db.len() + 1..len].iter_mut().zip(table.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    // Lower-casing ASCII bytes keeps UTF-8 valid.
    f(std::str::from_utf8(&buf[..len]).expect("ASCII lower-casing keeps UTF-8"))
}

impl TableClock {
    fn catalog_entry(&self, db: &str) -> Option<Arc<CatalogClock>> {
        let list = self.catalogs.read().expect("catalog list lock");
        list.iter().find(|c| &*c.db == db).cloned()
    }

    /// The database's catalog clock, added when first written.
    fn catalog_entry_or_add(&self, db: &str) -> Arc<CatalogClock> {
        if let Some(c) = self.catalog_entry(db) {
            return c;
        }
        let mut list = self.catalogs.write().expect("catalog list lock");
        if let Some(c) = list.iter().find(|c| &*c.db == db) {
            return c.clone();
        }
        let c = Arc::new(CatalogClock {
            db: db.into(),
            position: AtomicU64::new(0),
            pending_hint: AtomicUsize::new(0),
            pending: Mutex::new(Pending {
                commits: 0,
                until: Instant::now(),
            }),
        });
        list.push(c.clone());
        c
    }

    /// The catalog clock of `db`: what every read of it needs (UNREACHABLE while a
    /// commit of the catalog is pending).
    pub fn catalog(&self, db: &str) -> u64 {
        let list = self.catalogs.read().expect("catalog list lock");
        let Some(c) = list.iter().find(|c| &*c.db == db) else {
            return 0;
        };
        if c.pending_hint.load(Ordering::Acquire) > 0 {
            let p = c.pending.lock().expect("catalog clock lock");
            if p.commits > 0 && p.until > Instant::now() {
                return UNREACHABLE;
            }
        }
        c.position.load(Ordering::Acquire)
    }

    /// The last known commit position of a table (0 when never written).
    pub fn get(&self, db: &str, table: &str) -> u64 {
        if table == CATALOG {
            return self
                .catalog_entry(db)
                .map_or(0, |c| c.position.load(Ordering::Acquire));
        }
        let map = self.map.read().expect("table clock lock");
        with_key(db, table, |k| map.get(k).copied().unwrap_or(0))
    }

    /// The maximum over several tables; UNREACHABLE while one has a commit pending.
    pub fn max_of<'a>(&self, db: &str, tables: impl IntoIterator<Item = &'a str>) -> u64 {
        let map = self.map.read().expect("table clock lock");
        let pending = self.pending.read().expect("table clock lock");
        // Most of the time no commit is pending: no clock read then.
        let now = (!pending.is_empty()).then(Instant::now);
        let mut max = 0;
        for t in tables {
            if t == CATALOG {
                max = max.max(self.catalog(db));
                if max == UNREACHABLE {
                    return UNREACHABLE;
                }
                continue;
            }
            let (pending, pos) = with_key(db, t, |k| {
                (
                    now.is_some_and(|now| pending.get(k).is_some_and(|p| p.until > now)),
                    map.get(k).copied().unwrap_or(0),
                )
            });
            if pending {
                return UNREACHABLE;
            }
            max = max.max(pos);
        }
        max
    }

    /// The maximum over every table of `db` and its catalog: what a read that may see any
    /// table needs. UNREACHABLE while one has a commit pending. A scan of the map: only
    /// strict reads calling functions the proxy cannot follow ask it.
    pub fn max_all(&self, db: &str) -> u64 {
        let prefix = key(db, "");
        let mine = |k: &&String| k.starts_with(&prefix);
        {
            let pending = self.pending.read().expect("table clock lock");
            let now = Instant::now();
            if pending.iter().any(|(k, p)| mine(&k) && p.until > now) {
                return UNREACHABLE;
            }
        }
        let map = self.map.read().expect("table clock lock");
        let max = map.iter().filter(|(k, _)| mine(k)).map(|(_, v)| *v).max();
        max.unwrap_or(0).max(self.catalog(db))
    }

    /// The latest stamp. Read before a read is planned, it bounds every change whose
    /// commit the plan may have missed.
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Acquire)
    }

    /// Whether none of `tables` of `db` changed after `stamp`.
    pub fn unchanged_since<'a>(
        &self,
        db: &str,
        tables: impl IntoIterator<Item = &'a str>,
        stamp: u64,
    ) -> bool {
        let changed = self.changed.read().expect("table clock lock");
        tables
            .into_iter()
            .all(|t| with_key(db, t, |k| changed.get(k).is_none_or(|s| *s <= stamp)))
    }

    /// Gives `tables` the next stamp. Called after the change it marks is visible to
    /// readers of the clock, so a stamp read later sees the change too.
    fn touch<'a>(&self, db: &str, tables: impl IntoIterator<Item = &'a str>) {
        let mut changed = self.changed.write().expect("table clock lock");
        let s = self.stamp.fetch_add(1, Ordering::AcqRel) + 1;
        for t in tables {
            let known = with_key(db, t, |k| changed.get_mut(k).map(|e| *e = s));
            if known.is_none() {
                changed.insert(key(db, t), s);
            }
        }
    }

    /// A commit to these tables is about to be acknowledged; its position is not known
    /// yet. Lapses by itself after `ttl` should the position never arrive.
    pub fn begin_commit<'a>(
        &self,
        db: &str,
        tables: impl IntoIterator<Item = &'a str> + Clone,
        ttl: Duration,
    ) {
        let tables_again = tables.clone();
        let now = Instant::now();
        let mut pending = self.pending.write().expect("table clock lock");
        for t in tables {
            if t == CATALOG {
                let c = self.catalog_entry_or_add(db);
                let mut p = c.pending.lock().expect("catalog clock lock");
                if p.until <= now {
                    p.commits = 0;
                }
                p.commits += 1;
                p.until = now + ttl;
                c.pending_hint.store(p.commits, Ordering::Release);
                continue;
            }
            let p = pending.entry(key(db, t)).or_insert(Pending {
                commits: 0,
                until: now,
            });
            if p.until <= now {
                // Lapsed: the commits still counted will never report.
                p.commits = 0;
            }
            p.commits += 1;
            p.until = now + ttl;
        }
        drop(pending);
        self.touch(db, tables_again);
    }

    /// One commit's position is known: its tables are readable again once no other
    /// commit of theirs is still waiting for one.
    pub fn end_commit<'a>(&self, db: &str, tables: impl IntoIterator<Item = &'a str>) {
        self.end_commit_lapsed(db, tables);
    }

    /// `end_commit`, returning the tables whose marker had lapsed before it ended (reads
    /// of them may have been planned without the commit meanwhile).
    fn end_commit_lapsed<'a>(
        &self,
        db: &str,
        tables: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a str> {
        let now = Instant::now();
        let mut lapsed = Vec::new();
        let mut pending = self.pending.write().expect("table clock lock");
        for t in tables {
            if t == CATALOG {
                match self.catalog_entry(db) {
                    Some(c) => {
                        let mut p = c.pending.lock().expect("catalog clock lock");
                        if p.until <= now {
                            lapsed.push(t);
                        }
                        p.commits = p.commits.saturating_sub(1);
                        c.pending_hint.store(p.commits, Ordering::Release);
                    }
                    None => lapsed.push(t),
                }
                continue;
            }
            let found = with_key(db, t, |k| match pending.get_mut(k) {
                Some(p) => {
                    let gone = p.until <= now;
                    p.commits = p.commits.saturating_sub(1);
                    if p.commits == 0 {
                        pending.remove(k);
                    }
                    gone
                }
                None => true,
            });
            if found {
                lapsed.push(t);
            }
        }
        lapsed
    }

    /// A commit this proxy began (`begin_commit`) has its position: moves its tables to
    /// it and ends the commit. The cache's stamps moved at `begin_commit`; they move
    /// again only for tables whose marker lapsed meanwhile.
    pub fn settle<'a>(
        &self,
        db: &str,
        tables: impl IntoIterator<Item = &'a str> + Clone,
        lsn: u64,
    ) {
        self.advance_quietly(db, tables.clone(), lsn);
        let lapsed = self.end_commit_lapsed(db, tables);
        if !lapsed.is_empty() {
            self.touch(db, lapsed);
        }
    }

    /// Moves tables forward to `lsn` (never back).
    pub fn advance<'a>(
        &self,
        db: &str,
        tables: impl IntoIterator<Item = &'a str> + Clone,
        lsn: u64,
    ) {
        self.advance_quietly(db, tables.clone(), lsn);
        self.touch(db, tables);
    }

    /// Moves each table to its position from the fleet's stored clock where that is
    /// ahead, touching only those; returns whether any moved.
    pub fn catch_up<'a>(&self, db: &str, known: impl IntoIterator<Item = (&'a str, u64)>) -> bool {
        let ahead: Vec<(&str, u64)> = known
            .into_iter()
            .filter(|(t, lsn)| *lsn > self.get(db, t))
            .collect();
        for (t, lsn) in &ahead {
            self.advance(db, [*t], *lsn);
        }
        !ahead.is_empty()
    }

    /// `advance`, leaving the cache's stamps alone.
    fn advance_quietly<'a>(&self, db: &str, tables: impl IntoIterator<Item = &'a str>, lsn: u64) {
        let mut map = self.map.write().expect("table clock lock");
        for t in tables {
            if t == CATALOG {
                let c = self.catalog_entry_or_add(db);
                c.position.fetch_max(lsn, Ordering::AcqRel);
                continue;
            }
            // A table written before (the usual case) is found without allocating a key.
            let known = with_key(db, t, |k| map.get_mut(k).map(|e| *e = (*e).max(lsn)));
            if known.is_none() {
                map.insert(key(db, t), lsn);
            }
        }
        let entries = map.len() + self.catalogs.read().expect("catalog list lock").len();
        drop(map);
        metrics::gauge!("pgwarden_table_clock_entries").set(entries as f64);
    }

    /// Tables and catalogs with a clock.
    pub fn len(&self) -> usize {
        self.map.read().expect("table clock lock").len()
            + self.catalogs.read().expect("catalog list lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_clock_is_a_table_of_its_own_per_database() {
        let c = TableClock::default();
        assert_eq!(c.catalog("app"), 0);
        c.advance("app", ["t", CATALOG], 40);
        c.advance("app", [CATALOG], 30);
        c.advance("other", [CATALOG], 90);
        assert_eq!((c.catalog("app"), c.get("app", CATALOG)), (40, 40));
        assert_eq!(c.catalog("other"), 90);
        assert_eq!(c.max_of("app", ["u", CATALOG]), 40);
        assert_eq!(c.max_of("app", ["t"]), 40);
        // Pending like any table, until its position comes or the marker lapses.
        c.begin_commit("app", [CATALOG], Duration::from_secs(60));
        assert_eq!(c.catalog("app"), UNREACHABLE);
        assert_eq!(c.max_of("app", ["u", CATALOG]), UNREACHABLE);
        assert_eq!(c.catalog("other"), 90, "another database is not held up");
        c.advance("app", [CATALOG], 50);
        c.end_commit("app", [CATALOG]);
        assert_eq!(c.catalog("app"), 50);
        c.begin_commit("app", [CATALOG], Duration::ZERO);
        assert_eq!(c.catalog("app"), 50, "a lapsed marker holds nothing");
        assert_eq!(c.len(), 3, "t, and two catalogs");
    }

    #[test]
    fn a_read_of_any_table_needs_the_last_commit_of_its_database() {
        let c = TableClock::default();
        c.advance("app", ["t"], 10);
        c.advance("app", ["u"], 30);
        c.advance("application", ["t"], 99);
        assert_eq!(c.max_all("app"), 30);
        c.advance("app", [CATALOG], 40);
        assert_eq!(c.max_all("app"), 40);
        c.begin_commit("app", ["v"], Duration::from_secs(60));
        assert_eq!(c.max_all("app"), UNREACHABLE);
        assert_eq!(c.max_all("application"), 99);
    }

    #[test]
    fn advances_only_forward_per_database_and_table() {
        let c = TableClock::default();
        c.advance("app", ["t", "u"], 100);
        c.advance("app", ["t"], 50);
        c.advance("other", ["t"], 500);
        assert_eq!(c.get("app", "t"), 100);
        assert_eq!(c.get("app", "T"), 100);
        assert_eq!(c.max_of("app", ["t", "u", "v"]), 100);
        assert_eq!(c.get("app", "v"), 0);
        assert_eq!(c.get("other", "t"), 500);
    }

    #[test]
    fn a_pending_commit_makes_its_tables_unreachable_until_it_ends_or_lapses() {
        let c = TableClock::default();
        c.begin_commit("app", ["t"], Duration::from_secs(60));
        assert_eq!(c.max_of("app", ["u", "t"]), UNREACHABLE);
        assert_eq!(c.max_of("app", ["u"]), 0);
        c.advance("app", ["t"], 7);
        c.end_commit("app", ["t"]);
        assert_eq!(c.max_of("app", ["t"]), 7);
        c.begin_commit("app", ["t"], Duration::ZERO);
        assert_eq!(c.max_of("app", ["t"]), 7);
    }

    #[test]
    fn a_table_stays_unreachable_until_every_pending_commit_has_its_position() {
        let c = TableClock::default();
        let ttl = Duration::from_secs(60);
        c.begin_commit("app", ["t"], ttl);
        c.begin_commit("app", ["t", "u"], ttl);
        // The first commit's position arrives; the second's is still being read.
        c.advance("app", ["t"], 10);
        c.end_commit("app", ["t"]);
        assert_eq!(c.max_of("app", ["t"]), UNREACHABLE);
        assert_eq!(c.max_of("app", ["u"]), UNREACHABLE);
        c.advance("app", ["t", "u"], 20);
        c.end_commit("app", ["t", "u"]);
        assert_eq!(c.max_of("app", ["t", "u"]), 20);
        // A lapsed count does not outlive its deadline into the next commit.
        c.begin_commit("app", ["v"], Duration::ZERO);
        c.begin_commit("app", ["v"], ttl);
        c.end_commit("app", ["v"]);
        assert_eq!(c.max_of("app", ["v"]), 0);
    }

    #[test]
    fn a_settled_commit_moves_the_stamps_once_unless_its_marker_lapsed() {
        let c = TableClock::default();
        let before = c.stamp();
        c.begin_commit("app", ["t"], Duration::from_secs(60));
        let filled = c.stamp();
        assert!(
            !c.unchanged_since("app", ["t"], before),
            "the commit moved t"
        );
        c.settle("app", ["t"], 10);
        assert!(
            c.unchanged_since("app", ["t"], filled),
            "its position moves it no more"
        );
        assert_eq!(c.max_of("app", ["t"]), 10);
        c.begin_commit("app", ["t"], Duration::ZERO);
        let filled = c.stamp();
        c.settle("app", ["t"], 20);
        assert!(
            !c.unchanged_since("app", ["t"], filled),
            "a lapsed marker: moved again"
        );
        c.advance("app", ["u"], 5);
        assert!(
            !c.unchanged_since("app", ["u"], filled),
            "another proxy's write moves it"
        );
    }

    #[test]
    fn catching_up_moves_only_tables_the_fleet_has_further() {
        let c = TableClock::default();
        c.advance("app", ["t", CATALOG], 10);
        let filled = c.stamp();
        assert!(!c.catch_up("app", [("t", 10), (CATALOG, 5), ("u", 0)]));
        assert!(c.unchanged_since("app", ["t", CATALOG, "u"], filled));
        assert!(c.catch_up("app", [("t", 10), ("u", 7)]));
        assert!(c.unchanged_since("app", ["t"], filled), "t was current");
        assert!(!c.unchanged_since("app", ["u"], filled), "u moved");
        assert_eq!(c.max_of("app", ["u"]), 7);
        assert!(c.catch_up("app", [(CATALOG, 12)]));
        assert_eq!(c.catalog("app"), 12);
    }
}
