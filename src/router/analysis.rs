//! What a SQL string does, as far as routing, pinning and caching care: statement kinds,
//! tables read and written, locks, writing/volatile functions, SET/RESET and transaction modes.
//!
//! Parsing is done by sqlparser (PostgreSQL dialect). What it cannot parse is retried per
//! statement with small rewrites and then a keyword fallback (see `fallback`); anything still
//! unknown is reported as `parse_failed` so the router sends it to the primary.

mod classify;
mod collect;
mod fallback;
mod functions;
pub(crate) mod lexer;
mod limits;
#[cfg(test)]
mod tests;

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A table (or other relation) as written in the query. Unquoted identifiers are lower-cased
/// as PostgreSQL folds them; quoted ones are kept as written. A database qualifier is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl TableRef {
    /// `TableRef::new(None, "t")`; the arguments are taken as already normalised.
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        TableRef {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    pub(crate) fn from_object_name(name: &ObjectName) -> Self {
        let mut idents = name.0.iter().filter_map(|p| p.as_ident());
        let last = idents.next_back().map(normalize_ident).unwrap_or_default();
        let schema = idents.next_back().map(normalize_ident);
        TableRef { schema, name: last }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// PostgreSQL folds unquoted identifiers to lower case (ASCII only, as for UTF-8 databases).
pub(crate) fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    CopyFrom,
    CopyTo,
    Ddl,
    Truncate,
    Set,
    Reset,
    Show,
    Begin,
    Commit,
    Rollback,
    Savepoint,
    ReleaseSavepoint,
    RollbackToSavepoint,
    Prepare,
    Execute,
    Deallocate,
    Discard,
    Listen,
    Unlisten,
    Notify,
    Do,
    Call,
    Lock,
    Explain,
    /// VACUUM / ANALYZE / CLUSTER / REINDEX / CHECKPOINT.
    Maintenance,
    DeclareCursor,
    Fetch,
    ClosePortal,
    Other,
}

impl StatementKind {
    /// Kinds that must run on the primary by themselves: they change data or schema, or
    /// their effect is unknown (DO, CALL, EXECUTE, anything unrecognised).
    pub fn is_write(self) -> bool {
        use StatementKind::*;
        matches!(
            self,
            Insert
                | Update
                | Delete
                | Merge
                | CopyFrom
                | Ddl
                | Truncate
                | Lock
                | Maintenance
                | Do
                | Call
                | Execute
                | Notify
                | Other
                | Prepare
        )
    }
}

/// Session state a statement creates that cannot move to another server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    Listen,
    AdvisoryLock,
    TempTable,
    WithHoldCursor,
    SqlPrepare,
    SetRole,
    /// `set_config(name, value, false)` is a SET the proxy cannot see the value of.
    SetConfig,
    /// ROLLBACK TO SAVEPOINT in a block that ran a session-level SET: which SETs it
    /// undid only the server knows. Set by the session, not by analysis.
    SavepointUndoesSet,
}

/// The access mode a statement gives a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxnAccess {
    /// Not given: the session's default (read-write for the proxy's purposes).
    #[default]
    Unstated,
    ReadOnly,
    ReadWrite,
}

/// A SET or RESET of a run-time parameter. Names are lower-cased (PostgreSQL matches them
/// case-insensitively); `value` is SQL text valid after `SET name = `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetStmt {
    Set {
        name: String,
        value: String,
        local: bool,
    },
    Reset {
        name: String,
    },
    ResetAll,
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    pub kind: StatementKind,
    /// Tables read: FROM/JOIN/subqueries/CTE bodies (CTE names excluded), INSERT..SELECT
    /// sources, UPDATE..FROM, DELETE/MERGE USING. For PREPARE: those of the prepared
    /// statement; for plain EXPLAIN: every table of the explained statement.
    pub reads: Vec<TableRef>,
    /// Tables written: DML targets (also inside data-modifying CTEs), TRUNCATE, COPY FROM,
    /// DDL targets (CREATE/ALTER/DROP TABLE/VIEW/SEQUENCE, the table of CREATE INDEX, the index
    /// of DROP/ALTER INDEX, SELECT INTO's new table).
    pub writes: Vec<TableRef>,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE anywhere.
    pub locking: bool,
    /// Calls a function that writes or takes locks (nextval, advisory locks, lo_*, ...), or one
    /// from the configured list. Also set for EXPLAIN ANALYZE of a statement whose effect is
    /// unknown (EXECUTE, CALL, ...), which has no better field to say "runs something".
    pub writing_function: bool,
    /// Calls a function whose result changes from call to call or node to node (now(),
    /// random(), nextval, ...): such results must not be cached.
    pub volatile_function: bool,
    /// The functions it calls, lower-cased and unqualified, each once: a read calling a
    /// function of the database's own may see tables it does not name.
    pub calls: Vec<String>,
    /// The access mode BEGIN / START TRANSACTION / SET TRANSACTION gives, if any.
    pub access: TxnAccess,
    pub set: Option<SetStmt>,
    pub pins: Option<PinReason>,
}

impl StatementInfo {
    /// A statement of `kind` with nothing else known.
    pub fn new(kind: StatementKind) -> Self {
        StatementInfo {
            kind,
            reads: Vec::new(),
            writes: Vec::new(),
            locking: false,
            writing_function: false,
            volatile_function: false,
            calls: Vec::new(),
            access: TxnAccess::Unstated,
            set: None,
            pins: None,
        }
    }

    /// Whether this statement must run on the primary because it (may) write or lock.
    pub fn is_write(&self) -> bool {
        self.kind.is_write() || self.locking || self.writing_function || !self.writes.is_empty()
    }
}

/// The classification of a whole query string (one or more statements).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    pub statements: Vec<StatementInfo>,
    /// The SQL could not be understood; `statements` is then empty.
    pub parse_failed: bool,
}

impl Analysis {
    fn failed() -> Self {
        Analysis {
            statements: Vec::new(),
            parse_failed: true,
        }
    }

    /// Whether any statement writes, locks or calls a writing function (or the SQL could not
    /// be parsed, in which case it must be assumed to write).
    pub fn is_write(&self) -> bool {
        self.parse_failed || self.statements.iter().any(StatementInfo::is_write)
    }

    pub fn reads(&self) -> impl Iterator<Item = &TableRef> {
        self.statements.iter().flat_map(|s| s.reads.iter())
    }

    pub fn writes(&self) -> impl Iterator<Item = &TableRef> {
        self.statements.iter().flat_map(|s| s.writes.iter())
    }

    /// The first reason, if any statement pins the client to its server connection.
    pub fn pins(&self) -> Option<PinReason> {
        self.statements.iter().find_map(|s| s.pins)
    }

    /// Whether committing this may change what the catalog says (DDL, GRANT, COMMENT,
    /// PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED) or write tables the
    /// proxy cannot name (DO, CALL, EXECUTE, anything it did not understand): then every
    /// read of the database must see the commit (the catalog clock, consistency::CATALOG).
    pub fn changes_catalog(&self) -> bool {
        use StatementKind::*;
        self.parse_failed
            || self
                .statements
                .iter()
                .any(|s| matches!(s.kind, Ddl | Do | Call | Execute | Other))
    }

    /// The functions the statements call (lower-cased, unqualified).
    pub fn calls(&self) -> impl Iterator<Item = &str> {
        self.statements
            .iter()
            .flat_map(|s| s.calls.iter().map(String::as_str))
    }

    /// Whether any statement calls a volatile function (its result must not be cached).
    pub fn volatile(&self) -> bool {
        self.statements.iter().any(|s| s.volatile_function)
    }
}

/// Classifies `sql` (one or more `;`-separated statements). `extra_write_functions` are
/// function names (matched case-insensitively on the unqualified name) to treat as writing.
///
/// Never panics: SQL that neither sqlparser nor the keyword fallback understands yields
/// `parse_failed`. An empty string (or only comments) yields no statements.
pub fn analyze(sql: &str, extra_write_functions: &[String]) -> Analysis {
    if limits::expression_depth(sql) > limits::MAX_EXPRESSION_DEPTH {
        return Analysis::failed();
    }
    match parse(sql) {
        Some(stmts) => Analysis {
            statements: stmts
                .iter()
                .map(|s| classify::classify(s, extra_write_functions))
                .collect(),
            parse_failed: false,
        },
        // Slow path: one statement the parser rejects should not cost the others their
        // classification, so retry statement by statement.
        None => fallback::analyze_each(sql, extra_write_functions),
    }
}

/// sqlparser with a recursion limit that fits the stack (see `limits`), and a panic treated
/// as a parse error: the input is untrusted and a parser bug must not take a client task down.
fn parse(sql: &str) -> Option<Vec<Statement>> {
    std::panic::catch_unwind(|| {
        Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(limits::PARSER_RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
    })
    .ok()?
    .ok()
}
