//! The classification table: SQL in, expected StatementInfo out, for every statement family
//! the router, session and cache care about.

use super::*;
use PinReason as P;
use StatementKind as K;

/// Builder helpers so each table row reads like the classification it expects.
fn st(kind: StatementKind) -> StatementInfo {
    StatementInfo::new(kind)
}

fn tables(list: &[&str]) -> Vec<TableRef> {
    list.iter()
        .map(|t| match t.split_once('.') {
            Some((s, n)) => TableRef::new(Some(s), n),
            None => TableRef::new(None, t),
        })
        .collect()
}

impl StatementInfo {
    fn r(mut self, list: &[&str]) -> Self {
        self.reads = tables(list);
        self
    }
    fn w(mut self, list: &[&str]) -> Self {
        self.writes = tables(list);
        self
    }
    fn locks(mut self) -> Self {
        self.locking = true;
        self
    }
    fn wfn(mut self) -> Self {
        self.writing_function = true;
        self.volatile_function = true;
        self
    }
    fn vol(mut self) -> Self {
        self.volatile_function = true;
        self
    }
    fn pin(mut self, p: PinReason) -> Self {
        self.pins = Some(p);
        self
    }
    fn ro(mut self, read_only: bool) -> Self {
        self.access = if read_only {
            TxnAccess::ReadOnly
        } else {
            TxnAccess::ReadWrite
        };
        self
    }
    fn set_(mut self, name: &str, value: &str, local: bool) -> Self {
        self.set = Some(SetStmt::Set {
            name: name.into(),
            value: value.into(),
            local,
        });
        self
    }
    fn reset_(mut self, name: &str) -> Self {
        self.set = Some(SetStmt::Reset { name: name.into() });
        self
    }
}

/// (sql, expected statements, expected Analysis::is_write). One row per line, so unformatted.
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Vec<StatementInfo>, bool)> {
    vec![
        // --- plain, joined, sub-query and CTE selects
        ("SELECT 1", vec![st(K::Select)], false),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345", vec![st(K::Select).r(&["pgbench_accounts"])], false),
        ("select * from T join U on T.id = U.id left join v using (id)", vec![st(K::Select).r(&["t", "u", "v"])], false),
        ("SELECT * FROM a NATURAL JOIN b, c", vec![st(K::Select).r(&["a", "b", "c"])], false),
        ("SELECT * FROM t WHERE a IN (SELECT b FROM u) AND EXISTS (SELECT 1 FROM v)", vec![st(K::Select).r(&["t", "u", "v"])], false),
        ("SELECT (SELECT max(a) FROM u) FROM t", vec![st(K::Select).r(&["u", "t"])], false),
        ("SELECT * FROM (SELECT * FROM t) s, LATERAL (SELECT * FROM u WHERE u.x = s.x) l", vec![st(K::Select).r(&["t", "u"])], false),
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x JOIN u ON true", vec![st(K::Select).r(&["t", "u"])], false),
        ("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", vec![st(K::Select)], false),
        ("WITH a AS MATERIALIZED (SELECT * FROM t), b AS (SELECT * FROM a) SELECT * FROM b", vec![st(K::Select).r(&["t"])], false),
        // A CTE name hides a table only where the CTE is visible.
        ("WITH t AS (SELECT * FROM t) SELECT * FROM t", vec![st(K::Select).r(&["t"])], false),
        ("WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM a, b", vec![st(K::Select).r(&["a"])], false),
        ("WITH RECURSIVE a AS (SELECT 1 UNION ALL SELECT * FROM a), b AS (SELECT * FROM a) SELECT * FROM b", vec![st(K::Select)], false),
        ("SELECT * FROM x WHERE id IN (WITH x AS (SELECT 1) SELECT * FROM x)", vec![st(K::Select).r(&["x"])], false),
        ("SELECT 1 UNION SELECT a FROM t EXCEPT SELECT a FROM u", vec![st(K::Select).r(&["t", "u"])], false),
        ("SELECT 1 UNION TABLE t", vec![st(K::Select).r(&["t"])], false),
        ("TABLE t", vec![st(K::Select).r(&["t"])], false),
        ("VALUES (1), (2)", vec![st(K::Select)], false),
        ("SELECT * FROM generate_series(1, 3) g", vec![st(K::Select)], false),
        ("SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM ONLY t", vec![st(K::Select).r(&["t"])], false),
        ("SELECT * FROM t WHERE a = ANY($1) LIMIT $2", vec![st(K::Select).r(&["t"])], false),
        // --- schema-qualified and quoted names
        ("SELECT * FROM public.t JOIN \"Quoted\".\"Tbl\" ON true", vec![st(K::Select).r(&["public.t", "Quoted.Tbl"])], false),
        ("SELECT * FROM PUBLIC.T, db.Sch.Tab, \"MiXed\"", vec![st(K::Select).r(&["public.t", "sch.tab", "MiXed"])], false),
        ("INSERT INTO \"Quoted\".\"Tbl\" VALUES (1)", vec![st(K::Insert).w(&["Quoted.Tbl"])], true),
        // --- data-modifying CTEs
        ("WITH x AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT * FROM x", vec![st(K::Select).w(&["t"])], true),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x JOIN u ON true", vec![st(K::Select).w(&["t"]).r(&["u"])], true),
        ("WITH moved AS (DELETE FROM q RETURNING *) INSERT INTO done SELECT * FROM moved", vec![st(K::Insert).w(&["q", "done"])], true),
        // --- INSERT
        ("INSERT INTO t (a) VALUES (1)", vec![st(K::Insert).w(&["t"])], true),
        ("INSERT INTO t SELECT * FROM u WHERE u.a > 1", vec![st(K::Insert).w(&["t"]).r(&["u"])], true),
        ("INSERT INTO t SELECT * FROM t", vec![st(K::Insert).w(&["t"]).r(&["t"])], true),
        ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b", vec![st(K::Insert).w(&["t"])], true),
        ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING id", vec![st(K::Insert).w(&["t"])], true),
        ("INSERT INTO t (id) VALUES (nextval('t_id_seq'))", vec![st(K::Insert).w(&["t"]).wfn()], true),
        // --- UPDATE / DELETE / MERGE
        ("UPDATE pgbench_accounts SET abalance = abalance + 42 WHERE aid = 12345", vec![st(K::Update).w(&["pgbench_accounts"])], true),
        ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", vec![st(K::Update).w(&["t"]).r(&["u"])], true),
        ("UPDATE t SET a = (SELECT max(a) FROM t)", vec![st(K::Update).w(&["t"]).r(&["t"])], true),
        ("UPDATE ONLY s.t SET a = now()", vec![st(K::Update).w(&["s.t"]).vol()], true),
        ("DELETE FROM t USING u WHERE t.id = u.id", vec![st(K::Delete).w(&["t"]).r(&["u"])], true),
        ("DELETE FROM t AS x WHERE x.a IN (SELECT a FROM v)", vec![st(K::Delete).w(&["t"]).r(&["v"])], true),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
            vec![st(K::Merge).w(&["t"]).r(&["s"])],
            true,
        ),
        ("MERGE INTO t USING (SELECT * FROM u) s ON t.id = s.id WHEN MATCHED THEN DELETE", vec![st(K::Merge).w(&["t"]).r(&["u"])], true),
        // --- TRUNCATE / COPY
        ("TRUNCATE a, b", vec![st(K::Truncate).w(&["a", "b"])], true),
        ("TRUNCATE TABLE ONLY public.a RESTART IDENTITY CASCADE", vec![st(K::Truncate).w(&["public.a"])], true),
        ("COPY t FROM STDIN", vec![st(K::CopyFrom).w(&["t"])], true),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", vec![st(K::CopyFrom).w(&["t"])], true),
        ("COPY t TO STDOUT", vec![st(K::CopyTo).r(&["t"])], false),
        ("COPY (SELECT * FROM t JOIN u ON t.id = u.id) TO STDOUT WITH (FORMAT binary)", vec![st(K::CopyTo).r(&["t", "u"])], false),
        // --- DDL
        ("CREATE TABLE t (id int PRIMARY KEY)", vec![st(K::Ddl).w(&["t"])], true),
        ("CREATE TABLE t2 AS SELECT * FROM t", vec![st(K::Ddl).w(&["t2"]).r(&["t"])], true),
        ("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)", vec![st(K::Ddl).w(&["p1", "p"])], true),
        ("ALTER TABLE t ADD COLUMN b int", vec![st(K::Ddl).w(&["t"])], true),
        ("ALTER TABLE IF EXISTS ONLY s.t RENAME TO u", vec![st(K::Ddl).w(&["s.t"])], true),
        ("DROP TABLE a, b CASCADE", vec![st(K::Ddl).w(&["a", "b"])], true),
        ("DROP TABLE IF EXISTS \"Mixed\", public.lower", vec![st(K::Ddl).w(&["Mixed", "public.lower"])], true),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", vec![st(K::Ddl).w(&["t"])], true),
        ("CREATE UNIQUE INDEX IF NOT EXISTS i ON public.t USING btree (a)", vec![st(K::Ddl).w(&["public.t"])], true),
        ("DROP INDEX i", vec![st(K::Ddl).w(&["i"])], true),
        ("ALTER INDEX i RENAME TO j", vec![st(K::Ddl).w(&["i"])], true),
        ("CREATE VIEW v AS SELECT * FROM t", vec![st(K::Ddl).w(&["v"]).r(&["t"])], true),
        ("CREATE OR REPLACE VIEW v AS SELECT a FROM t JOIN u ON true", vec![st(K::Ddl).w(&["v"]).r(&["t", "u"])], true),
        ("DROP VIEW v", vec![st(K::Ddl).w(&["v"])], true),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", vec![st(K::Ddl).w(&["mv"]).r(&["t"])], true),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", vec![st(K::Ddl).w(&["mv"])], true),
        ("CREATE SCHEMA s", vec![st(K::Ddl)], true),
        ("GRANT SELECT ON t TO bob", vec![st(K::Ddl)], true),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", vec![st(K::Ddl)], true),
        // --- temporary objects pin the session
        ("CREATE TEMP TABLE tt (id int)", vec![st(K::Ddl).w(&["tt"]).pin(P::TempTable)], true),
        ("CREATE TEMPORARY TABLE tt AS SELECT * FROM u", vec![st(K::Ddl).w(&["tt"]).r(&["u"]).pin(P::TempTable)], true),
        ("CREATE TEMP VIEW tv AS SELECT 1", vec![st(K::Ddl).w(&["tv"]).pin(P::TempTable)], true),
        ("CREATE TEMP SEQUENCE ts", vec![st(K::Ddl).w(&["ts"]).pin(P::TempTable)], true),
        ("CREATE TEMP TABLE tt (id int) ON COMMIT DROP", vec![st(K::Ddl).w(&["tt"])], true),
        ("CREATE TEMP TABLE IF NOT EXISTS tt (LIKE u INCLUDING ALL)", vec![st(K::Ddl).w(&["tt"]).pin(P::TempTable)], true),
        ("SELECT * INTO TEMP newt FROM t", vec![st(K::Ddl).w(&["newt"]).r(&["t"]).pin(P::TempTable)], true),
        ("SELECT a, b INTO s.newt FROM t", vec![st(K::Ddl).w(&["s.newt"]).r(&["t"])], true),
        // --- row locks
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", vec![st(K::Select).r(&["t"]).locks()], true),
        ("SELECT * FROM t FOR SHARE OF t NOWAIT", vec![st(K::Select).r(&["t"]).locks()], true),
        ("SELECT * FROM t FOR NO KEY UPDATE", vec![st(K::Select).r(&["t"]).locks()], true),
        ("SELECT * FROM t FOR KEY SHARE SKIP LOCKED", vec![st(K::Select).r(&["t"]).locks()], true),
        ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", vec![st(K::Select).r(&["t"]).locks()], true),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR NO KEY UPDATE)", vec![st(K::Select).r(&["t", "u"]).locks()], true),
        // --- writing, locking and volatile functions
        ("SELECT nextval('s')", vec![st(K::Select).wfn()], true),
        ("SELECT pg_catalog.NEXTVAL('s')", vec![st(K::Select).wfn()], true),
        ("SELECT setval('s', 10)", vec![st(K::Select).wfn()], true),
        ("SELECT pg_advisory_lock(1)", vec![st(K::Select).wfn().pin(P::AdvisoryLock)], true),
        ("SELECT pg_try_advisory_lock(1, 2)", vec![st(K::Select).wfn().pin(P::AdvisoryLock)], true),
        ("SELECT * FROM pg_try_advisory_lock(1)", vec![st(K::Select).wfn().pin(P::AdvisoryLock)], true),
        ("SELECT pg_advisory_xact_lock(1)", vec![st(K::Select).wfn()], true),
        ("SELECT set_config('search_path', 'x', false)", vec![st(K::Select).vol().pin(P::SetConfig)], false),
        ("SELECT lo_import('/tmp/x')", vec![st(K::Select).wfn()], true),
        ("SELECT pg_notify('chan', 'x')", vec![st(K::Select).wfn()], true),
        ("SELECT audit_write(id) FROM t", vec![st(K::Select).r(&["t"]).wfn()], true),
        ("SELECT audit.AUDIT_WRITE(1)", vec![st(K::Select).wfn()], true),
        ("SELECT now(), a FROM t", vec![st(K::Select).r(&["t"]).vol()], false),
        ("SELECT * FROM t WHERE ts > current_timestamp - interval '1 day'", vec![st(K::Select).r(&["t"]).vol()], false),
        ("SELECT random(), gen_random_uuid(), uuid_generate_v4()", vec![st(K::Select).vol()], false),
        ("SELECT lower(a), length(b) FROM t", vec![st(K::Select).r(&["t"])], false),
        // --- SET / RESET / SHOW
        ("SET search_path TO \"$user\", public", vec![st(K::Set).set_("search_path", "\"$user\", public", false)], false),
        ("SET LOCAL statement_timeout = '5s'", vec![st(K::Set).set_("statement_timeout", "'5s'", true)], false),
        ("SET SESSION work_mem = 4096", vec![st(K::Set).set_("work_mem", "4096", false)], false),
        ("SET application_name = 'it''s'", vec![st(K::Set).set_("application_name", "'it''s'", false)], false),
        ("SET pgwarden.route = 'replica'", vec![st(K::Set).set_("pgwarden.route", "'replica'", false)], false),
        ("set DateStyle to postgres, dmy", vec![st(K::Set).set_("datestyle", "postgres, dmy", false)], false),
        ("SET extra_float_digits = -1", vec![st(K::Set).set_("extra_float_digits", "-1", false)], false),
        ("SET TIME ZONE 'UTC'", vec![st(K::Set).set_("timezone", "'UTC'", false)], false),
        ("SET TIME ZONE LOCAL", vec![st(K::Set).set_("timezone", "DEFAULT", false)], false),
        ("SET SCHEMA 'app'", vec![st(K::Set).set_("search_path", "'app'", false)], false),
        ("SET ROLE admin", vec![st(K::Set).set_("role", "admin", false).pin(P::SetRole)], false),
        ("SET LOCAL ROLE admin", vec![st(K::Set).set_("role", "admin", true)], false),
        ("SET SESSION AUTHORIZATION bob", vec![st(K::Set).set_("session_authorization", "bob", false).pin(P::SetRole)], false),
        ("SET TRANSACTION READ ONLY", vec![st(K::Set).ro(true)], false),
        ("SET CONSTRAINTS ALL DEFERRED", vec![st(K::Set)], false),
        ("RESET work_mem", vec![st(K::Reset).reset_("work_mem")], false),
        ("RESET TIME ZONE", vec![st(K::Reset).reset_("timezone")], false),
        ("RESET ROLE", vec![st(K::Reset).reset_("role")], false),
        ("RESET ALL", vec![StatementInfo { set: Some(SetStmt::ResetAll), ..st(K::Reset) }], false),
        ("SHOW work_mem", vec![st(K::Show)], false),
        ("SHOW TRANSACTION ISOLATION LEVEL", vec![st(K::Show)], false),
        // --- transaction control
        ("BEGIN", vec![st(K::Begin)], false),
        ("BEGIN READ ONLY", vec![st(K::Begin).ro(true)], false),
        ("BEGIN TRANSACTION READ WRITE", vec![st(K::Begin).ro(false)], false),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", vec![st(K::Begin).ro(true)], false),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", vec![st(K::Begin)], false),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", vec![st(K::Begin).ro(true)], false),
        ("COMMIT", vec![st(K::Commit)], false),
        ("END", vec![st(K::Commit)], false),
        ("ROLLBACK", vec![st(K::Rollback)], false),
        ("ABORT", vec![st(K::Rollback)], false),
        ("SAVEPOINT s1", vec![st(K::Savepoint)], false),
        ("RELEASE SAVEPOINT s1", vec![st(K::ReleaseSavepoint)], false),
        ("ROLLBACK TO SAVEPOINT s1", vec![st(K::RollbackToSavepoint)], false),
        ("ROLLBACK TO s1", vec![st(K::RollbackToSavepoint)], false),
        ("PREPARE TRANSACTION 'gid'", vec![st(K::Other)], true),
        ("COMMIT PREPARED 'gid'", vec![st(K::Other)], true),
        // --- SQL-level prepared statements
        ("PREPARE p (int) AS SELECT * FROM t WHERE id = $1", vec![st(K::Prepare).r(&["t"]).pin(P::SqlPrepare)], true),
        ("PREPARE u AS UPDATE t SET a = 1", vec![st(K::Prepare).w(&["t"]).pin(P::SqlPrepare)], true),
        ("EXECUTE p (1)", vec![st(K::Execute)], true),
        ("DEALLOCATE p", vec![st(K::Deallocate)], false),
        ("DEALLOCATE ALL", vec![st(K::Deallocate)], false),
        ("DISCARD ALL", vec![st(K::Discard)], false),
        // --- LISTEN / NOTIFY
        ("LISTEN chan", vec![st(K::Listen).pin(P::Listen)], false),
        ("UNLISTEN chan", vec![st(K::Unlisten)], false),
        ("UNLISTEN *", vec![st(K::Unlisten)], false),
        ("NOTIFY chan, 'payload'", vec![st(K::Notify)], true),
        // --- procedural and locking utilities
        ("DO $$BEGIN PERFORM 1; END$$", vec![st(K::Do)], true),
        ("DO LANGUAGE plpgsql $$ BEGIN NULL; END $$", vec![st(K::Do)], true),
        ("CALL p(1)", vec![st(K::Call)], true),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", vec![st(K::Lock).r(&["t"])], true),
        ("LOCK a, b IN SHARE MODE NOWAIT", vec![st(K::Lock).r(&["a", "b"])], true),
        // --- EXPLAIN
        ("EXPLAIN SELECT * FROM t", vec![st(K::Explain).r(&["t"])], false),
        ("EXPLAIN DELETE FROM t USING u", vec![st(K::Explain).r(&["u", "t"])], false),
        ("EXPLAIN SELECT * FROM t FOR UPDATE", vec![st(K::Explain).r(&["t"])], false),
        ("EXPLAIN ANALYZE DELETE FROM t", vec![st(K::Explain).w(&["t"])], true),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", vec![st(K::Explain).w(&["t"])], true),
        ("EXPLAIN (ANALYZE false) UPDATE t SET a = 1", vec![st(K::Explain).r(&["t"])], false),
        ("EXPLAIN ANALYZE SELECT * FROM t", vec![st(K::Explain).r(&["t"])], false),
        ("EXPLAIN ANALYZE EXECUTE p", vec![StatementInfo { writing_function: true, ..st(K::Explain) }], true),
        // --- maintenance
        ("VACUUM", vec![st(K::Maintenance)], true),
        ("VACUUM t", vec![st(K::Maintenance).r(&["t"])], true),
        ("VACUUM (VERBOSE, ANALYZE) t", vec![st(K::Maintenance)], true),
        ("ANALYZE t", vec![st(K::Maintenance).r(&["t"])], true),
        ("CHECKPOINT", vec![st(K::Maintenance)], true),
        ("REINDEX TABLE t", vec![st(K::Maintenance)], true),
        // --- cursors
        ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", vec![st(K::DeclareCursor).r(&["t"]).pin(P::WithHoldCursor)], false),
        ("DECLARE c CURSOR FOR SELECT * FROM t", vec![st(K::DeclareCursor).r(&["t"])], false),
        ("DECLARE c SCROLL CURSOR FOR SELECT * FROM t FOR UPDATE", vec![st(K::DeclareCursor).r(&["t"]).locks()], true),
        ("FETCH 10 FROM c", vec![st(K::Fetch)], false),
        ("FETCH NEXT c", vec![st(K::Fetch)], false),
        ("MOVE NEXT IN c", vec![st(K::Fetch)], false),
        ("CLOSE c", vec![st(K::ClosePortal)], false),
        // --- several statements in one string
        ("SELECT * FROM t; SELECT * FROM u", vec![st(K::Select).r(&["t"]), st(K::Select).r(&["u"])], false),
        ("SELECT * FROM t; UPDATE u SET a = 1", vec![st(K::Select).r(&["t"]), st(K::Update).w(&["u"])], true),
        ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", vec![st(K::Begin), st(K::Insert).w(&["t"]), st(K::Commit)], true),
        // One statement sqlparser rejects does not spoil the others.
        ("DISCARD ALL; DO $$ BEGIN END $$; SELECT * FROM t", vec![st(K::Discard), st(K::Do), st(K::Select).r(&["t"])], true),
        ("SELECT 1; CHECKPOINT", vec![st(K::Select), st(K::Maintenance)], true),
        // --- more corners
        ("BEGIN READ WRITE", vec![st(K::Begin).ro(false)], false),
        ("COMMIT AND CHAIN", vec![st(K::Commit)], false),
        ("NOTIFY chan", vec![st(K::Notify)], true),
        ("SHOW ALL", vec![st(K::Show)], false),
        ("SET work_mem TO DEFAULT", vec![st(K::Set).set_("work_mem", "DEFAULT", false)], false),
        ("SET ROLE NONE", vec![st(K::Set).set_("role", "NONE", false).pin(P::SetRole)], false),
        ("RESET SESSION AUTHORIZATION", vec![st(K::Reset).reset_("session_authorization")], false),
        ("DISCARD TEMP", vec![st(K::Discard)], false),
        ("CLOSE ALL", vec![st(K::ClosePortal)], false),
        ("FETCH ALL IN c", vec![st(K::Fetch)], false),
        ("ANALYZE", vec![st(K::Maintenance)], true),
        ("COPY t TO '/tmp/f'", vec![st(K::CopyTo).r(&["t"])], false),
        ("COPY t FROM PROGRAM 'gen'", vec![st(K::CopyFrom).w(&["t"])], true),
        ("INSERT INTO t DEFAULT VALUES RETURNING id", vec![st(K::Insert).w(&["t"])], true),
        ("UPDATE t SET a = 1 WHERE id = 1 RETURNING *", vec![st(K::Update).w(&["t"])], true),
        ("VALUES (nextval('s'))", vec![st(K::Select).wfn()], true),
        ("SELECT currval('s'), pg_sleep(1)", vec![st(K::Select).vol()], false),
        ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", vec![st(K::Select).r(&["t"])], false),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE OF t", vec![st(K::Select).r(&["t"]).locks()], true),
        ("DROP SEQUENCE s", vec![st(K::Ddl).w(&["s"])], true),
        ("DROP MATERIALIZED VIEW mv", vec![st(K::Ddl).w(&["mv"])], true),
        ("COMMENT ON TABLE t IS 'x'", vec![st(K::Ddl)], true),
        ("CREATE POLICY p ON t USING (owner = current_user)", vec![st(K::Ddl).w(&["t"])], true),
        ("CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", vec![st(K::Ddl).w(&["t"])], true),
        ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT * FROM t", vec![st(K::Explain).w(&["x"]).r(&["t"])], true),
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", vec![st(K::Explain).w(&["t"])], true),
        ("EXPLAIN EXECUTE p", vec![st(K::Explain)], false),
        ("EXPLAIN SELECT nextval('s')", vec![st(K::Explain).vol()], false),
        ("LOAD 'auto_explain'", vec![st(K::Other)], true),
        ("CLUSTER t", vec![st(K::Maintenance)], true),
        // --- comments and hints do not matter
        ("/* pgwarden:primary */ SELECT * FROM t -- trailing", vec![st(K::Select).r(&["t"])], false),
    ]
}

#[test]
fn classification_table() {
    let extra = vec!["audit_write".to_string()];
    let mut failures = Vec::new();
    let all = cases();
    for (sql, expected, write) in &all {
        let mut a = analyze(sql, &extra);
        // Calls have a test of their own.
        a.statements.iter_mut().for_each(|s| s.calls.clear());
        let got = (&a.statements, a.parse_failed, a.is_write());
        if got != (expected, false, *write) {
            failures.push(format!(
                "{sql}\n   expected: {expected:?} write={write}\n   got:      {:?} failed={} write={}",
                a.statements,
                a.parse_failed,
                a.is_write()
            ));
        }
    }
    assert!(all.len() >= 100, "table has {} rows", all.len());
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn the_functions_a_statement_calls_are_listed_once() {
    let a = analyze(
        "SELECT count(*), My_Func(x), public.\"Other\"(1) FROM t WHERE my_func(y) > 0",
        &[],
    );
    assert_eq!(a.calls().collect::<Vec<_>>(), ["count", "my_func", "other"]);
    let a = analyze("SELECT v FROM t WHERE id = $1", &[]);
    assert_eq!(a.calls().count(), 0);
}

#[test]
fn unparsable_and_empty_input() {
    for sql in [
        "garbage string here",
        "SELECT FROM WHERE (",
        "DROP INDEX CONCURRENTLY IF EXISTS i",
        "SELECT 1; nonsense",
    ] {
        let a = analyze(sql, &[]);
        assert_eq!(
            a,
            Analysis {
                statements: vec![],
                parse_failed: true
            },
            "{sql}"
        );
        assert!(a.is_write());
    }
    for sql in ["", "   ", "-- only a comment", ";;", "/* x */ ;"] {
        let a = analyze(sql, &[]);
        assert_eq!(a, Analysis::default(), "{sql:?}");
        assert!(!a.is_write());
    }
}

#[test]
fn analysis_helpers() {
    let a = analyze(
        "SELECT * FROM t; INSERT INTO u SELECT * FROM v; LISTEN c",
        &[],
    );
    assert_eq!(a.reads().cloned().collect::<Vec<_>>(), tables(&["t", "v"]));
    assert_eq!(a.writes().cloned().collect::<Vec<_>>(), tables(&["u"]));
    assert_eq!(a.pins(), Some(P::Listen));
    assert!(a.is_write());
    assert!(!a.volatile());
    assert_eq!(TableRef::new(Some("s"), "T").to_string(), "s.T");
}

/// Each shape at the largest size the limits admit must not overflow a 2 MiB stack (the
/// test thread's and tokio's default), and bigger ones must be refused, not crash.
#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let shapes: [fn(usize) -> String; 8] = [
        |n| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n)),
        |n| {
            format!(
                "SELECT * FROM {}t{}",
                "(SELECT * FROM ".repeat(n),
                ") x".repeat(n)
            )
        },
        |n| {
            format!(
                "SELECT 1 WHERE {}1{}",
                "a IN (SELECT ".repeat(n),
                ")".repeat(n)
            )
        },
        |n| {
            format!(
                "SELECT {}1{}",
                "CASE WHEN a THEN ".repeat(n),
                " END".repeat(n)
            )
        },
        |n| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        |n| format!("SELECT * FROM t WHERE {}", vec!["a = 1"; n].join(" OR ")),
        |n| format!("SELECT a{} FROM t", "::int".repeat(n)),
        |n| format!("SELECT 1{}", " UNION SELECT 1".repeat(n)),
    ];
    for shape in shapes {
        for n in [1, 5, 10, 20, 50, 100, 1000, 10_000] {
            let sql = shape(n);
            let a = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || analyze(&sql, &[]))
                .unwrap()
                .join()
                .unwrap();
            if n >= 10_000 {
                assert!(a.parse_failed, "{}", shape(n));
            }
        }
    }
    // The longest operator chain admitted, under the deepest nesting admitted.
    let chain = ["a"; limits::MAX_EXPRESSION_DEPTH + 1].join(" + ");
    let nest = limits::PARSER_RECURSION_LIMIT / 3;
    let sql = format!(
        "SELECT {}{chain}{}",
        "(SELECT ".repeat(nest),
        ")".repeat(nest)
    );
    let a = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || analyze(&sql, &[]))
        .unwrap()
        .join()
        .unwrap();
    assert!(!a.parse_failed);
    // Nested subqueries with an operator chain inside each.
    let chain = ["a"; limits::MAX_EXPRESSION_DEPTH / 8].join(" + ");
    let sql = format!("SELECT {}{chain}{}", "(SELECT ".repeat(6), ")".repeat(6));
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || analyze(&sql, &[]))
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn moderate_nesting_still_parses() {
    let sql = format!(
        "SELECT * FROM {}t{}",
        "(SELECT * FROM ".repeat(5),
        ") x".repeat(5)
    );
    assert_eq!(analyze(&sql, &[]).statements, vec![st(K::Select).r(&["t"])]);
    let ors = vec!["(a = 1 AND b = 2)"; 20].join(" OR ");
    assert!(!analyze(&format!("SELECT * FROM t WHERE {ors}"), &[]).parse_failed);
    let list = (0..5000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(!analyze(&format!("SELECT * FROM t WHERE a IN ({list})"), &[]).parse_failed);
}

/// Random soups of SQL fragments and odd bytes: nothing may panic, and fingerprints must be
/// deterministic.
#[test]
fn random_input_never_panics() {
    const PARTS: &[&str] = &[
        "SELECT ",
        "FROM ",
        "t ",
        "WHERE ",
        "a = ",
        "1 ",
        "'x''y' ",
        "E'\\'' ",
        "$$ ",
        "$q$ ",
        "$1 ",
        "( ",
        ") ",
        ", ",
        "; ",
        "-- c\n",
        "/* ",
        "*/ ",
        "\"Q\" ",
        "FOR ",
        "UPDATE ",
        "NO KEY ",
        "SET ",
        "LOCAL ",
        "TO ",
        "RESET ",
        "BEGIN ",
        "READ ONLY ",
        "CREATE TEMP TABLE ",
        "WITH x AS ",
        "INSERT INTO ",
        "VALUES ",
        "DO ",
        "é ",
        "\u{0} ",
        "- ",
        ":: ",
        "[ ",
        "] ",
        "TABLE ",
        "EXPLAIN ",
        "ANALYZE ",
        "nextval(",
        "LISTEN ",
        "e'",
        "'",
        "\"",
        "$",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let n = (next() % 14) as usize;
        let sql: String = (0..n)
            .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
            .collect();
        let a = analyze(&sql, &[]);
        assert!(!a.parse_failed || a.statements.is_empty(), "{sql:?}");
        assert_eq!(
            crate::router::fingerprint::fingerprint(&sql),
            crate::router::fingerprint::fingerprint(&sql)
        );
        let _ = crate::router::fingerprint::leading_hint(&sql);
    }
}

#[test]
fn what_changes_the_catalog_or_writes_tables_unnamed() {
    // (sql, changes the catalog)
    let cases = [
        ("create type mood as enum ('a')", true),
        ("alter table t add column c int", true),
        (
            "create function f() returns int language sql as 'select 1'",
            true,
        ),
        ("drop table t", true),
        ("grant select on t to app", true),
        ("revoke select on t from app", true),
        ("comment on table t is 'x'", true),
        ("create extension if not exists pgcrypto", true),
        ("create index on t (a)", true),
        ("prepare transaction 'x'", true),
        ("commit prepared 'x'", true),
        ("rollback prepared 'x'", true),
        ("do $$ begin end $$", true),
        ("call p()", true),
        ("execute s", true),
        ("security label on table t is 'x'", true),
        ("select 1; create table u (a int)", true),
        ("select * from t", false),
        ("insert into t values (1)", false),
        ("update t set a = 1", false),
        ("truncate t", false),
        ("select pg_advisory_lock(1)", false),
        ("vacuum t", false),
        ("begin", false),
        ("commit", false),
    ];
    for (sql, want) in cases {
        assert_eq!(analyze(sql, &[]).changes_catalog(), want, "{sql}");
    }
}
