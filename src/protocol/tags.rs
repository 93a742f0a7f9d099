//! Message type bytes by name: the server's as postgres-protocol names them, the
//! client's (which it leaves unnamed) in the same style.

pub mod backend {
    pub use postgres_protocol::message::backend::{
        AUTHENTICATION_TAG, BACKEND_KEY_DATA_TAG, BIND_COMPLETE_TAG, CLOSE_COMPLETE_TAG,
        COMMAND_COMPLETE_TAG, COPY_DATA_TAG, COPY_DONE_TAG, COPY_IN_RESPONSE_TAG,
        COPY_OUT_RESPONSE_TAG, DATA_ROW_TAG, EMPTY_QUERY_RESPONSE_TAG, ERROR_RESPONSE_TAG,
        NOTICE_RESPONSE_TAG, NOTIFICATION_RESPONSE_TAG, NO_DATA_TAG, PARAMETER_DESCRIPTION_TAG,
        PARAMETER_STATUS_TAG, PARSE_COMPLETE_TAG, PORTAL_SUSPENDED_TAG, READY_FOR_QUERY_TAG,
        ROW_DESCRIPTION_TAG,
    };
    /// CopyBothResponse (replication), which postgres-protocol does not name.
    pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
}

pub mod frontend {
    pub const BIND_TAG: u8 = b'B';
    pub const CLOSE_TAG: u8 = b'C';
    pub const COPY_DATA_TAG: u8 = b'd';
    pub const COPY_DONE_TAG: u8 = b'c';
    pub const COPY_FAIL_TAG: u8 = b'f';
    pub const DESCRIBE_TAG: u8 = b'D';
    pub const EXECUTE_TAG: u8 = b'E';
    pub const FLUSH_TAG: u8 = b'H';
    pub const FUNCTION_CALL_TAG: u8 = b'F';
    pub const PARSE_TAG: u8 = b'P';
    pub const QUERY_TAG: u8 = b'Q';
    pub const SYNC_TAG: u8 = b'S';
    pub const TERMINATE_TAG: u8 = b'X';

    /// A message that ends a request: the proxy may check out a server for it.
    pub fn completes_request(tag: u8) -> bool {
        matches!(tag, QUERY_TAG | SYNC_TAG | FUNCTION_CALL_TAG | FLUSH_TAG)
    }

    /// A message type a client may send after startup.
    pub fn is_valid(tag: u8) -> bool {
        matches!(
            tag,
            QUERY_TAG
                | PARSE_TAG
                | BIND_TAG
                | DESCRIBE_TAG
                | EXECUTE_TAG
                | CLOSE_TAG
                | SYNC_TAG
                | FLUSH_TAG
                | FUNCTION_CALL_TAG
                | COPY_DATA_TAG
                | COPY_DONE_TAG
                | COPY_FAIL_TAG
                | TERMINATE_TAG
        )
    }
}
