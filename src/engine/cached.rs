//! The result cache in a request's path: a safe read is looked up before it is planned
//! onto a server; a miss is filled from what the client then receives, routed by the
//! strict rule whatever the session's mode (a fill from a lagging replica would keep
//! old rows for its TTL).

use super::plan::Needed;
use super::Engine;
use crate::cache::policy::{NoCache, Read};
use crate::cache::{key, Fill, Lookup, Refused};
use crate::config::PoolMode;
use crate::consistency::{CATALOG, OPAQUE};
use crate::protocol::tags::frontend::QUERY_TAG;
use crate::protocol::views;
use bytes::{Bytes, BytesMut};

impl Engine {
    /// For a simple Query the cache may answer: its kept reply, or None with a fill
    /// started (and `needed` raised to what the fill needs) or nothing to do. `stamp`
    /// is the table clock's, read before the request was planned.
    pub(crate) fn cache_lookup(
        &mut self,
        req: &BytesMut,
        tag: u8,
        stamp: u64,
        needed: &mut Needed,
    ) -> Option<Bytes> {
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
        let db = session.database.as_str();
        let k = key::key(db, &user.name, &user.server_user, &session.params, req);
        let clock = &self.shared.table_clock;
        match cache.get(&k, clock, period) {
            Lookup::Hit(reply) => return Some(reply),
            Lookup::Miss => {}
        }
        let mut tables: Vec<String> = analysis.reads().map(|t| t.name.to_lowercase()).collect();
        tables.extend([CATALOG.to_string(), OPAQUE.to_string()]);
        // The fill must see every commit acknowledged before `stamp`, in any mode.
        let strict = clock.max_of(db, tables.iter().map(String::as_str));
        needed.min_position = needed.min_position.max(strict);
        self.fill = Some(Box::new(Fill {
            key: k,
            db: db.to_string(),
            tables,
            stamp,
            period,
            ttl,
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
