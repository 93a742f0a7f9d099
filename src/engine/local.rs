//! Requests the proxy answers itself, without a server: `SET/RESET pgwarden.*`.

use super::Engine;
use crate::protocol::tags::frontend::QUERY_TAG;
use crate::protocol::views::sql_of;
use crate::protocol::{to_client, walk};
use crate::router::analysis::SetStmt;
use crate::router::text::contains_ci;

impl Engine {
    /// Answers a simple Query made only of `SET/RESET pgwarden.*` itself: these are
    /// the proxy's settings (and `primary` is a reserved word PostgreSQL would reject
    /// unquoted). Returns false when the request is anything else.
    /// Cheap pre-check for answer_proxy_settings.
    pub(crate) fn is_proxy_settings(&self, req: &[u8]) -> bool {
        req.first() == Some(&QUERY_TAG) && contains_ci(req, b"pgwarden.")
    }

    pub(crate) async fn answer_proxy_settings(&mut self, req: &[u8]) -> std::io::Result<bool> {
        if !self.is_proxy_settings(req) {
            return Ok(false);
        }
        let Some(sql) = walk::single(req).and_then(|m| sql_of(QUERY_TAG, m.body())) else {
            return Ok(false);
        };
        let a = self.shared.parse_cache.analyze(sql);
        let ours = |s: &crate::router::analysis::StatementInfo| match &s.set {
            Some(SetStmt::Set { name, .. }) | Some(SetStmt::Reset { name }) => {
                name.to_ascii_lowercase().starts_with("pgwarden.")
            }
            _ => false,
        };
        if a.statements.is_empty() || !a.statements.iter().all(ours) {
            return Ok(false);
        }
        // Only pgwarden.* settings here: nothing for the server to confirm.
        self.session
            .note_effects(&a, &mut Vec::new(), self.config.consistency.mode);
        for s in &a.statements {
            let tag = if matches!(s.set, Some(SetStmt::Reset { .. })) {
                "RESET"
            } else {
                "SET"
            };
            to_client::command_complete(&mut self.out, tag);
        }
        to_client::ready_for_query(&mut self.out, b'I');
        self.flush_out().await?;
        Ok(true)
    }
}
