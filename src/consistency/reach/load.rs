//! Each database's reach model, read from the primary's catalog in the background:
//! on first need, again once the catalog clock moves past the reading, and every
//! REFRESH (DDL that bypassed every proxy). Until a current one is in, callers fall
//! back to the whole-session rule.

use super::{CatalogRows, DepKind, FunctionRow, Reach, Ref};
use crate::backend::pool::ServerPool;
use crate::consistency::{TableClock, CATALOG};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Past this a model is read again in the background (and used meanwhile).
const REFRESH: Duration = Duration::from_secs(60);

/// How long a commit waits for a model being read (the first write of a database, the
/// first after DDL), rather than bounding every read of its session and, in strict
/// mode, every read. After a failed reading, commits do not wait, nor is it read
/// again, for RETRY.
pub const COMMIT_WAIT: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_secs(5);

/// One query, rows tagged by kind; every column text. System schemas are left out: their
/// objects change only with DDL, which moves the catalog clock every read needs anyway.
const SQL: &str = "\
WITH ns AS (SELECT oid FROM pg_namespace \
  WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%') \
SELECT 'r', c.oid::text, c.relname::text, c.relkind::text, NULL, NULL FROM pg_class c \
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'i', inhrelid::text, inhparent::text, NULL, NULL, NULL FROM pg_inherits \
UNION ALL SELECT 'f', confrelid::text, conrelid::text, NULL, NULL, NULL FROM pg_constraint \
  WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd')) \
UNION ALL SELECT 't', tgrelid::text, tgfoid::text, NULL, NULL, NULL FROM pg_trigger \
  WHERE NOT tgisinternal \
UNION ALL SELECT CASE WHEN r.ev_type = '1' THEN 'v' ELSE 'u' END, r.ev_class::text, \
  d.refobjid::text, CASE WHEN d.refclassid = 'pg_proc'::regclass THEN 'p' ELSE 'c' END, NULL, NULL \
  FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
  AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass) AND d.refobjid <> r.ev_class \
UNION ALL SELECT 'q', p.polrelid::text, d.refobjid::text, \
  CASE WHEN d.refclassid = 'pg_proc'::regclass THEN 'p' ELSE 'c' END, NULL, NULL \
  FROM pg_policy p JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid \
  AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass) AND d.refobjid <> p.polrelid \
UNION ALL SELECT 'p', p.oid::text, p.proname::text, l.lanname::text, \
  (p.provolatile = 'i')::text, CASE WHEN p.prokind NOT IN ('f', 'p') THEN NULL \
  WHEN l.lanname = 'sql' THEN pg_get_functiondef(p.oid) ELSE p.prosrc END \
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
  WHERE p.pronamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT DISTINCT 'b', NULL, proname::text, NULL, NULL, NULL FROM pg_proc \
  WHERE pronamespace = 'pg_catalog'::regnamespace";

/// The rows of SQL as a catalog; rows it cannot read are skipped, except that a
/// function without a readable body stays in, opaque.
pub fn parse_rows(rows: &[Vec<Option<String>>]) -> CatalogRows {
    let mut c = CatalogRows::default();
    for row in rows {
        let col = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let oid = |i: usize| col(i).and_then(|v| v.parse::<u32>().ok());
        let refer = |oid: u32| match col(3) {
            Some("p") => Ref::Function(oid),
            _ => Ref::Relation(oid),
        };
        match (col(0), oid(1), oid(2)) {
            (Some("r"), Some(o), _) => {
                let kind = col(3).and_then(|k| k.chars().next()).unwrap_or('r');
                c.relations
                    .push((o, col(2).unwrap_or_default().to_lowercase(), kind));
            }
            (Some("i"), Some(a), Some(b)) => c.inherits.push((a, b)),
            (Some("f"), Some(a), Some(b)) => c.cascades.push((a, b)),
            (Some("t"), Some(a), Some(b)) => c.triggers.push((a, b)),
            (Some("v"), Some(a), Some(b)) => c.deps.push((DepKind::View, a, refer(b))),
            (Some("u"), Some(a), Some(b)) => c.deps.push((DepKind::Rule, a, refer(b))),
            (Some("q"), Some(a), Some(b)) => c.deps.push((DepKind::Policy, a, refer(b))),
            (Some("b"), _, _) => c.builtins.push(col(2).unwrap_or_default().to_lowercase()),
            (Some("p"), Some(o), _) => c.functions.push(FunctionRow {
                oid: o,
                name: col(2).unwrap_or_default().to_lowercase(),
                // No body (an aggregate, a window function): nothing to read in it.
                language: col(5)
                    .map_or("", |_| col(3).unwrap_or_default())
                    .to_string(),
                body: col(5).unwrap_or_default().to_string(),
                immutable: col(4) == Some("true"),
            }),
            _ => {}
        }
    }
    c
}

/// A database's model and when it was read.
pub struct Loaded {
    pub reach: Reach,
    /// The catalog clock when the reading began: a later catalog commit makes it stale.
    catalog_at: u64,
    at: Instant,
}

/// The models of every database this proxy serves.
#[derive(Default)]
pub struct ReachMaps {
    maps: ArcSwap<HashMap<String, Arc<Loaded>>>,
    // Held only to add or take a name, never across an await.
    loading: Mutex<HashSet<String>>,
    /// Databases whose last reading failed, and when.
    failed: Mutex<HashMap<String, Instant>>,
    /// Woken whenever a reading ends.
    read_done: Notify,
    /// Some model has a relation whose reads may see any table: only then must a read
    /// calling no function look at the model.
    opaque_reads: AtomicBool,
}

impl ReachMaps {
    /// Whether some database has a relation whose reads may see any table (a view or
    /// policy running a function the model cannot follow).
    pub fn any_opaque_reads(&self) -> bool {
        self.opaque_reads.load(Ordering::Acquire)
    }

    /// The model of `db` if it is current: read after the last catalog commit known.
    /// Starts a reading on `pool` (the primary's) when there is none, it is stale, or
    /// it is older than REFRESH.
    pub fn current(
        self: &Arc<Self>,
        db: &str,
        clock: &Arc<TableClock>,
        pool: &ServerPool,
    ) -> Option<Arc<Loaded>> {
        let catalog = clock.catalog(db);
        let loaded = self.maps.load().get(db).cloned();
        let fresh = loaded.as_ref().filter(|l| l.catalog_at >= catalog);
        if fresh.is_none_or(|l| l.at.elapsed() > REFRESH) {
            self.start_load(db, clock, pool);
        }
        fresh.cloned()
    }

    /// As `current`, waiting up to `wait` for a reading under way or started now;
    /// at once None if the last reading of `db` failed within RETRY.
    pub async fn current_waiting(
        self: &Arc<Self>,
        db: &str,
        clock: &Arc<TableClock>,
        pool: &ServerPool,
        wait: Duration,
    ) -> Option<Arc<Loaded>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Created before looking: a reading that ends in between still wakes it.
            let done = self.read_done.notified();
            if let Some(l) = self.current(db, clock, pool) {
                return Some(l);
            }
            if self.failed_lately(db) {
                return None;
            }
            tokio::time::timeout_at(deadline, done).await.ok()?;
        }
    }

    fn failed_lately(&self, db: &str) -> bool {
        let failed = self.failed.lock().expect("reach lock").get(db).copied();
        failed.is_some_and(|at| at.elapsed() < RETRY)
    }

    fn start_load(self: &Arc<Self>, db: &str, clock: &Arc<TableClock>, pool: &ServerPool) {
        if self.failed_lately(db) {
            return;
        }
        if !self
            .loading
            .lock()
            .expect("reach lock")
            .insert(db.to_string())
        {
            return;
        }
        let (maps, clock, pool, db) = (self.clone(), clock.clone(), pool.clone(), db.to_string());
        tokio::spawn(async move {
            // Read before the query: a catalog commit recorded later may be missing from it.
            let catalog_at = clock.get(&db, CATALOG);
            match read(&pool).await {
                Ok(rows) => {
                    let reach = Reach::build(parse_rows(&rows));
                    let loaded = Arc::new(Loaded {
                        reach,
                        catalog_at,
                        at: Instant::now(),
                    });
                    let all = maps.maps.rcu(|m| {
                        let mut m = HashMap::clone(m);
                        m.insert(db.clone(), loaded.clone());
                        m
                    });
                    let opaque = all
                        .values()
                        .chain([&loaded])
                        .any(|l| l.reach.has_opaque_reads());
                    maps.opaque_reads.store(opaque, Ordering::Release);
                    maps.failed.lock().expect("reach lock").remove(&db);
                    metrics::counter!("pgwarden_reach_loads_total", "outcome" => "ok").increment(1);
                }
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "cannot read the catalog for read-your-writes");
                    maps.failed
                        .lock()
                        .expect("reach lock")
                        .insert(db.clone(), Instant::now());
                    metrics::counter!("pgwarden_reach_loads_total", "outcome" => "error")
                        .increment(1);
                }
            }
            maps.loading.lock().expect("reach lock").remove(&db);
            maps.read_done.notify_waiters();
        });
    }
}

async fn read(pool: &ServerPool) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut conn = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = conn.query_rows(SQL).await;
    if conn.broken {
        let _ = deadpool::managed::Object::take(conn);
    }
    Ok(rows?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[Option<&str>]) -> Vec<Option<String>> {
        cols.iter().map(|c| c.map(str::to_string)).collect()
    }

    #[test]
    fn rows_become_a_catalog() {
        let rows = vec![
            row(&[
                Some("r"),
                Some("16400"),
                Some("Orders"),
                Some("r"),
                None,
                None,
            ]),
            row(&[Some("i"), Some("16402"), Some("16401"), None, None, None]),
            row(&[Some("f"), Some("16400"), Some("16403"), None, None, None]),
            row(&[Some("t"), Some("16400"), Some("16500"), None, None, None]),
            row(&[
                Some("v"),
                Some("16404"),
                Some("16400"),
                Some("c"),
                None,
                None,
            ]),
            row(&[
                Some("q"),
                Some("16405"),
                Some("16501"),
                Some("p"),
                None,
                None,
            ]),
            row(&[
                Some("p"),
                Some("16500"),
                Some("audit"),
                Some("plpgsql"),
                Some("false"),
                Some("BEGIN END"),
            ]),
            row(&[
                Some("p"),
                Some("16502"),
                Some("agg"),
                Some("internal"),
                Some("true"),
                None,
            ]),
            row(&[Some("b"), None, Some("now"), None, None, None]),
            row(&[Some("x"), Some("nonsense"), None, None, None, None]),
        ];
        let c = parse_rows(&rows);
        assert_eq!(c.relations, [(16400, "orders".to_string(), 'r')]);
        assert_eq!(
            (c.inherits, c.cascades, c.triggers),
            (
                vec![(16402, 16401)],
                vec![(16400, 16403)],
                vec![(16400, 16500)]
            )
        );
        assert_eq!(
            c.deps,
            [
                (DepKind::View, 16404, Ref::Relation(16400)),
                (DepKind::Policy, 16405, Ref::Function(16501))
            ]
        );
        assert_eq!(c.functions.len(), 2);
        assert_eq!(c.builtins, ["now"]);
        assert_eq!(
            (c.functions[0].language.as_str(), c.functions[0].immutable),
            ("plpgsql", false)
        );
        // No body: no language to read it in, so opaque unless immutable.
        assert_eq!(
            (c.functions[1].language.as_str(), c.functions[1].immutable),
            ("", true)
        );
    }
}
