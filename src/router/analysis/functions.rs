//! Built-in function names that make a statement a write, pin the session, or make its result
//! uncacheable. Names are compared case-insensitively on the unqualified name.

use super::PinReason;

/// Functions that change state, take locks, or act on the node they run on (so must run on
/// the primary: on a replica they fail or do the wrong thing).
const WRITING: &[&str] = &[
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "dblink_exec",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
];

/// Prefixes of writing function families (large objects: lo_create, lo_import, lo_put, ...).
const WRITING_PREFIXES: &[&str] = &["lo_"];

/// Session-level advisory locks: held until unlocked or the session ends, so the client must
/// keep its server connection. The `_xact_` variants end with the transaction and do not pin.
const SESSION_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Functions whose result differs between calls, transactions, sessions or nodes. Every
/// writing function is treated as volatile too.
const VOLATILE: &[&str] = &[
    "now",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "transaction_timestamp",
    "statement_timestamp",
    "clock_timestamp",
    "timeofday",
    "age",
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "gen_random_bytes",
    "txid_current_if_assigned",
    "pg_current_xact_id_if_assigned",
    "currval",
    "lastval",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_backend_pid",
    "current_setting",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_in_recovery",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
];

const VOLATILE_PREFIXES: &[&str] = &["uuid_generate_", "pg_stat_get_"];

/// What calling a function means for the statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FunctionEffect {
    pub writing: bool,
    pub volatile: bool,
    pub pin: Option<PinReason>,
}

fn in_list(name: &str, list: &[&str]) -> bool {
    list.iter().any(|f| f.eq_ignore_ascii_case(name))
}

fn has_prefix(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        name.len() > p.len()
            && name.is_char_boundary(p.len())
            && name[..p.len()].eq_ignore_ascii_case(p)
    })
}

/// The unqualified part of a configured name (`audit.log_write` -> `log_write`).
fn last_part(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Effect of calling `name` (unqualified); `extra` are configured writing functions.
pub(super) fn effect(name: &str, extra: &[String]) -> FunctionEffect {
    let writing = in_list(name, WRITING)
        || has_prefix(name, WRITING_PREFIXES)
        || extra
            .iter()
            .any(|f| last_part(f).eq_ignore_ascii_case(name));
    let pin = if in_list(name, SESSION_LOCKS) {
        Some(PinReason::AdvisoryLock)
    } else if name.eq_ignore_ascii_case("set_config") {
        // Session state set by a function call: it cannot follow the client to another
        // server connection, and on a shared one it would reach other clients.
        Some(PinReason::SetConfig)
    } else {
        None
    };
    FunctionEffect {
        writing,
        volatile: writing
            || pin.is_some()
            || in_list(name, VOLATILE)
            || has_prefix(name, VOLATILE_PREFIXES),
        pin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects() {
        let none: &[String] = &[];
        assert!(effect("NEXTVAL", none).writing);
        assert!(effect("lo_import", none).writing);
        assert!(!effect("lo_", none).writing);
        assert!(!effect("lower", none).writing);
        assert_eq!(
            effect("pg_advisory_lock", none).pin,
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(effect("pg_advisory_xact_lock", none).pin, None);
        assert_eq!(effect("SET_CONFIG", none).pin, Some(PinReason::SetConfig));
        assert!(effect("set_config", none).volatile);
        assert!(effect("pg_advisory_xact_lock", none).writing);
        assert!(effect("uuid_generate_v4", none).volatile);
        assert!(!effect("uuid_generate_v4", none).writing);
        assert!(effect("now", none).volatile);
        assert!(!effect("length", none).volatile);
        let extra = vec!["Audit.Write_Log".to_string()];
        assert!(effect("write_log", &extra).writing);
        assert!(effect("write_log", &extra).volatile);
    }
}
