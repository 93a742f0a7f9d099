//! The result cache in a request's path: a safe read is looked up before it is planned
//! onto a server; a miss is filled from what the client then receives, routed by the
//! strict rule whatever the session's mode (a fill from a lagging replica would keep
//! old rows for its TTL).

use super::plan::Needed;
use super::Engine;
use crate::cache::key::{self, Key};
use crate::cache::policy::{NoCache, Read};
use crate::cache::{Cache, Fill, Lookup, Refused};
use crate::config::PoolMode;
use crate::consistency::{CATALOG, OPAQUE};
use crate::protocol::tags::frontend::QUERY_TAG;
use crate::protocol::views;
use crate::router::analysis::Analysis;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

/// A read the cache may answer, before it is looked up.
pub(crate) struct Probe {
    cache: Arc<Cache>,
    key: Key,
    ttl: Duration,
    /// The fleet bus's period (0 without a bus).
    period: u64,
    analysis: Arc<Analysis>,
    /// `tables()`, once asked (a fleet's catch-up asks before the lookup).
    tables: Option<Vec<String>>,
}

impl Probe {
    /// What an entry of it depends on: the tables it reads (lower-cased), the catalog
    /// and the opaque clock.
    pub(crate) fn tables(&mut self) -> &[String] {
        let analysis = &self.analysis;
        self.tables.get_or_insert_with(|| {
            let reads = analysis.reads().map(|t| t.name.to_lowercase());
            reads
                .chain([CATALOG.to_string(), OPAQUE.to_string()])
                .collect()
        })
    }

    /// The fleet could not say what changed: nothing is served or kept.
    pub(crate) fn give_up(self) {
        self.cache.channel_down();
    }
}

impl Engine {
    /// For a simple Query the cache may answer: what to look up, or None (and why,
    /// counted) when the cache must not answer it.
    pub(crate) fn cache_probe(&mut self, req: &BytesMut, tag: u8) -> Option<Probe> {
        let cache = self.shared.cache.clone()?;
        if tag != QUERY_TAG {
            return None;
        }
        let analysis = self.routed.clone()?;
        let session = &self.session;
        let ttl = if !session.cache {
            Err(NoCache::SessionOff)
        } else if session.mode != PoolMode::Transaction || session.pinned.is_some() {
            Err(NoCache::Session)
        } else {
            let sql = views::sql_of(QUERY_TAG, req.get(5..)?)?;
            let read = Read {
                analysis: &analysis,
                sql,
            };
            let (db, clock, pool) = (&session.database, &self.shared.table_clock, &self.pool.pool);
            let loaded = self.shared.reach.current(db, clock, pool);
            let catalog = loaded
                .as_ref()
                .map(|l| &l.reach as &dyn crate::cache::policy::Catalog);
            cache.rules.decide(&read, catalog)
        };
        let ttl = match ttl {
            Ok(ttl) => ttl,
            Err(why) => {
                cache.skipped(why);
                return None;
            }
        };
        let Some(period) = self.bus_period() else {
            cache.channel_down();
            return None;
        };
        let user = &session.user;
        let key = key::key(
            &session.database,
            &user.name,
            &user.server_user,
            &session.params,
            req,
        );
        Some(Probe {
            cache,
            key,
            ttl,
            period,
            analysis,
            tables: None,
        })
    }

    /// The probe's kept reply, or None with a fill started (and `needed` raised to what
    /// the fill needs). `stamp` is the table clock's, read before the request was planned.
    pub(crate) fn cache_lookup(
        &mut self,
        mut probe: Probe,
        stamp: u64,
        needed: &mut Needed,
    ) -> Option<Bytes> {
        let clock = &self.shared.table_clock;
        match probe.cache.get(&probe.key, clock, probe.period) {
            Lookup::Hit(reply) => return Some(reply),
            Lookup::Miss => {}
        }
        let db = self.session.database.as_str();
        probe.tables();
        let tables = probe.tables.take().unwrap_or_default();
        // The fill must see every commit acknowledged before `stamp`, in any mode.
        let strict = clock.max_of(db, tables.iter().map(String::as_str));
        needed.min_position = needed.min_position.max(strict);
        self.fill = Some(Box::new(Fill {
            key: probe.key,
            db: db.to_string(),
            tables,
            stamp,
            period: probe.period,
            ttl: probe.ttl,
            reply: BytesMut::new(),
            spoiled: None,
        }));
        None
    }

    /// The request was answered: keep its fill, if it had one and it holds.
    pub(crate) fn cache_finish(&mut self) {
        if let (Some(fill), Some(cache)) = (self.fill.take(), self.shared.cache.as_ref()) {
            cache.finish(*fill, &self.shared.table_clock, self.bus_period());
        }
    }

    /// The fleet bus's period (0 without a bus); None while it is down, when the cache
    /// may have missed invalidations from the rest of the fleet.
    fn bus_period(&self) -> Option<u64> {
        match &self.shared.bus {
            None => Some(0),
            Some(bus) => bus.period(),
        }
    }

    /// The client sent more while the fill's reply was still coming.
    pub(crate) fn cache_spoil(&mut self) {
        if let Some(fill) = self.fill.as_mut() {
            fill.spoiled.get_or_insert(Refused::Pipelined);
        }
    }
}
