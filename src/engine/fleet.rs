//! Reads in a fleet: before a read is planned onto a replica, or answered or filled by
//! the cache, the clocks it depends on are brought up to the fleet's stored clock. The
//! bus message of a write another proxy has acknowledged may still be on its way; the
//! stored clock has it already.

use super::cached::Probe;
use super::plan::Needed;
use super::Engine;
use crate::config::ConsistencyMode;
use crate::consistency::reach::ReadSpan;
use crate::consistency::{CATALOG, OPAQUE};
use crate::router::analysis::Analysis;
use std::sync::Arc;

/// The clocks a replica read must bring up to date in a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetReads {
    /// These (lower-cased), with the catalog among them.
    Tables(Vec<String>),
    /// Every table of the database (the read may see any).
    All,
}

impl Engine {
    /// What a read of these statements must catch up on before a replica may serve it,
    /// by the session's mode; None without a fleet or in eventual mode.
    pub(crate) fn fleet_reads<'a>(
        &self,
        analyses: impl Iterator<Item = &'a Arc<Analysis>> + Clone,
    ) -> Option<FleetReads> {
        self.shared.bus.as_ref()?;
        match self.session.consistency {
            ConsistencyMode::Eventual => None,
            ConsistencyMode::Session => Some(FleetReads::Tables(vec![CATALOG.to_string()])),
            ConsistencyMode::Strict => match self.read_span(analyses.clone()) {
                ReadSpan::Any => Some(FleetReads::All),
                ReadSpan::Tables(extra) => {
                    let named = analyses
                        .flat_map(|a| a.reads())
                        .map(|t| t.name.to_lowercase());
                    let tables = named
                        .chain(extra)
                        .chain([CATALOG.to_string(), OPAQUE.to_string()])
                        .collect();
                    Some(FleetReads::Tables(tables))
                }
            },
        }
    }

    /// Catches the local clock up with the fleet's for what this read depends on: the
    /// replica read's `needed.fleet` and the cache `probe`'s tables. When something
    /// moved, the read needs the new positions and a fill gets a fresh `stamp`. When
    /// Redis does not answer, routing goes on with the local clock (as in any bus
    /// outage) and the cache neither answers nor fills.
    pub(crate) async fn fleet_catch_up(
        &mut self,
        needed: &mut Needed,
        probe: &mut Option<Probe>,
        stamp: &mut Option<u64>,
    ) {
        let Some(bus) = self.shared.bus.clone() else {
            return;
        };
        let mut all = false;
        let mut tables: Vec<String> = Vec::new();
        match needed.fleet.take() {
            Some(FleetReads::All) => all = true,
            Some(FleetReads::Tables(t)) => tables = t,
            None if probe.is_none() => return,
            None => {}
        }
        let replica_read = all || !tables.is_empty();
        if let Some(p) = probe.as_mut() {
            tables.extend_from_slice(p.tables());
        }
        tables.sort_unstable();
        tables.dedup();
        let names: Vec<&str> = tables.iter().map(String::as_str).collect();
        let db = self.session.database.clone();
        let which = (!all).then_some(names.as_slice());
        match bus.catch_up(&db, which).await {
            Ok(false) => {}
            Ok(true) => {
                let clock = &self.shared.table_clock;
                if stamp.is_some() {
                    *stamp = Some(clock.stamp());
                }
                if replica_read {
                    let now = if all {
                        clock.max_all(&db)
                    } else {
                        clock.max_of(&db, names.iter().copied())
                    };
                    needed.min_position = needed.min_position.max(now);
                }
            }
            Err(e) => {
                tracing::debug!("fleet catch-up failed: {e:#}");
                metrics::counter!("pgwarden_bus_catch_up_failures_total").increment(1);
                if let Some(p) = probe.take() {
                    p.give_up();
                }
            }
        }
    }
}
