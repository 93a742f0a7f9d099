//! The rules by which statements change a session: pins, the proxy's own settings
//! (`SET pgwarden.route`, `SET pgwarden.consistency`), and session-level SETs, kept for
//! the client once the server has committed them.

use super::Session;
use crate::backend::conn::quote_literal;
use crate::config::ConsistencyMode;
use crate::router::analysis::{Analysis, SetStmt};
use crate::router::plan::RouteOverride;

impl Session {
    /// Notes what a statement does to the session: it may pin the client to its
    /// connection; session-level SETs are remembered (applied once the server confirms
    /// them); `SET pgwarden.route` acts at once.
    /// `default_consistency` is what RESET pgwarden.consistency goes back to.
    pub fn note_effects(
        &mut self,
        a: &Analysis,
        sets: &mut Vec<SetStmt>,
        default_consistency: ConsistencyMode,
    ) {
        if self.pinned.is_none() {
            if let Some(pin) = a.pins() {
                tracing::debug!(?pin, "client pinned to its server connection");
                self.pinned = Some(pin);
            }
        }
        for s in &a.statements {
            match &s.set {
                Some(SetStmt::Set {
                    name,
                    value,
                    local: false,
                }) if name.eq_ignore_ascii_case("pgwarden.route") => {
                    self.route_override =
                        match value.trim_matches('\'').to_ascii_lowercase().as_str() {
                            "primary" => RouteOverride::Primary,
                            "replica" => RouteOverride::Replica,
                            _ => RouteOverride::Auto,
                        };
                }
                Some(SetStmt::Reset { name }) if name.eq_ignore_ascii_case("pgwarden.route") => {
                    self.route_override = RouteOverride::Auto;
                }
                Some(SetStmt::Set {
                    name,
                    value,
                    local: false,
                }) if name.eq_ignore_ascii_case("pgwarden.consistency") => {
                    self.consistency = match value.trim_matches('\'').to_ascii_lowercase().as_str()
                    {
                        "session" => ConsistencyMode::Session,
                        "eventual" => ConsistencyMode::Eventual,
                        _ => ConsistencyMode::Strict,
                    };
                }
                Some(SetStmt::Reset { name })
                    if name.eq_ignore_ascii_case("pgwarden.consistency") =>
                {
                    self.consistency = default_consistency;
                }
                Some(SetStmt::Set {
                    name,
                    value,
                    local: false,
                }) if name.eq_ignore_ascii_case("pgwarden.cache") => {
                    let v = value.trim_matches('\'').to_ascii_lowercase();
                    self.cache = !matches!(v.as_str(), "off" | "false" | "0" | "no");
                }
                Some(SetStmt::Reset { name }) if name.eq_ignore_ascii_case("pgwarden.cache") => {
                    self.cache = true;
                }
                Some(SetStmt::Set { local: true, .. }) | None => {}
                Some(other) => sets.push(other.clone()),
            }
        }
    }

    /// Applies remembered SETs to the session once the server has committed them, and
    /// records in `applied` (what the server connection carries) that it now carries
    /// them.
    pub fn settle_sets(
        &mut self,
        sets: Vec<SetStmt>,
        committed: bool,
        applied: &mut Vec<(String, String)>,
    ) {
        if sets.is_empty() || !committed {
            return;
        }
        for s in sets {
            match s {
                SetStmt::Set { name, value, .. } => {
                    // Kept as SQL text, the way it is replayed.
                    let name = name.to_ascii_lowercase();
                    match self
                        .params
                        .iter_mut()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        Some(slot) => slot.1 = value,
                        None => self.params.push((name, value)),
                    }
                }
                SetStmt::Reset { name } => {
                    self.params.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                    // A startup value is the session default PostgreSQL resets to.
                    if let Some((n, v)) = self
                        .startup_params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        self.params.push((n.clone(), quote_literal(v)));
                    }
                }
                SetStmt::ResetAll => {
                    self.params = self
                        .startup_params
                        .iter()
                        .map(|(n, v)| (n.clone(), quote_literal(v)))
                        .collect();
                    // The server went back to its own defaults, startup values included.
                    applied.clear();
                    return;
                }
            }
        }
        *applied = self.params.clone();
    }
}

#[cfg(test)]
#[path = "sets_tests.rs"]
mod tests;
