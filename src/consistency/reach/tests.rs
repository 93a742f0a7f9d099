//! Table tests of the reach model over a small hand-built catalog.

use super::*;

fn f(oid: u32, name: &str, language: &str, body: &str) -> FunctionRow {
    FunctionRow {
        oid,
        name: name.into(),
        language: language.into(),
        body: body.into(),
        immutable: false,
    }
}

/// orders(1) ← order_lines(2) ON DELETE CASCADE; orders has an audit trigger writing
/// audit(3); events(4) is partitioned into events_2026(5); v_orders(6) is a view of
/// orders; logs(7) has a trigger running dynamic SQL; secrets(8) has a policy reading
/// grants(9); v_opaque(10) is a view calling a C function; plain(11) has nothing.
fn catalog() -> Reach {
    let rel = |oid, name: &str, kind| (oid, name.to_string(), kind);
    Reach::build(CatalogRows {
        relations: vec![
            rel(1, "orders", 'r'),
            rel(2, "order_lines", 'r'),
            rel(3, "audit", 'r'),
            rel(4, "events", 'p'),
            rel(5, "events_2026", 'r'),
            rel(6, "v_orders", 'v'),
            rel(7, "logs", 'r'),
            rel(8, "secrets", 'r'),
            rel(9, "grants", 'r'),
            rel(10, "v_opaque", 'v'),
            rel(11, "Plain", 'r'),
        ],
        inherits: vec![(5, 4)],
        cascades: vec![(1, 2)],
        triggers: vec![(1, 100), (7, 101)],
        deps: vec![
            (DepKind::View, 6, Ref::Relation(1)),
            (DepKind::Policy, 8, Ref::Relation(9)),
            (DepKind::View, 10, Ref::Function(102)),
        ],
        functions: vec![
            f(
                100,
                "audit_orders",
                "plpgsql",
                "BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END",
            ),
            f(
                101,
                "route_log",
                "plpgsql",
                "BEGIN EXECUTE 'INSERT INTO ' || x; RETURN NEW; END",
            ),
            f(102, "native", "c", "native"),
            f(103, "count_orders", "sql", "SELECT count(*) FROM orders"),
            // Calls another function: its tables count too.
            f(104, "wrapper", "sql", "SELECT count_orders()"),
        ],
        builtins: vec!["count".into(), "now".into()],
    })
}

#[test]
fn a_write_reaches_what_the_catalog_says_it_can() {
    let r = catalog();
    let cases: &[(&[&str], Option<&[&str]>)] = &[
        (&["plain"], Some(&["plain"])),
        // Cascade to the referencing table, the trigger's table, the view showing it.
        (
            &["ORDERS"],
            Some(&["audit", "order_lines", "orders", "v_orders"]),
        ),
        (&["order_lines"], Some(&["order_lines"])),
        // A partition shows through its parent; a write to the parent reaches partitions.
        (&["events_2026"], Some(&["events", "events_2026"])),
        (&["events"], Some(&["events", "events_2026"])),
        // Writing through the view writes its table.
        (
            &["v_orders"],
            Some(&["audit", "order_lines", "orders", "v_orders"]),
        ),
        // The policy of secrets reads grants.
        (&["grants"], Some(&["grants", "secrets"])),
        // A trigger with dynamic SQL, a name the catalog lacks: cannot be told.
        (&["logs"], None),
        (&["plain", "logs"], None),
        (&["no_such_table"], None),
    ];
    for (written, want) in cases {
        let got = r.writes(written.iter().copied(), []);
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "writing {written:?}");
    }
}

#[test]
fn a_write_calling_a_function_writes_what_it_touches() {
    let r = catalog();
    let w = |calls: &[&str]| r.writes(["plain"], calls.iter().copied());
    assert_eq!(w(&["count", "now"]), Some(vec!["plain".to_string()]));
    let with_orders = ["audit", "order_lines", "orders", "plain", "v_orders"];
    assert_eq!(
        w(&["wrapper"]),
        Some(with_orders.map(String::from).to_vec())
    );
    assert_eq!(w(&["native"]), None);
    assert_eq!(w(&["brand_new"]), None);
}

#[test]
fn a_read_sees_the_tables_of_the_functions_it_calls() {
    let r = catalog();
    let t = |v: &[&str]| ReadSpan::Tables(v.iter().map(|s| s.to_string()).collect());
    let cases: &[(&[&str], &[&str], ReadSpan)] = &[
        (&["orders"], &[], t(&[])),
        // PostgreSQL's own functions are no user functions.
        (&["orders"], &["count", "now"], t(&[])),
        (&[], &["count_orders"], t(&["orders"])),
        (&[], &["wrapper"], t(&["orders"])),
        (&[], &["native"], ReadSpan::Any),
        // Neither PostgreSQL's nor known: created since the model was read.
        (&[], &["brand_new"], ReadSpan::Any),
        (&[], &["coalesce"], t(&[])),
        (&["v_opaque"], &[], ReadSpan::Any),
    ];
    for (reads, calls, want) in cases {
        assert_eq!(
            &r.reads(reads.iter().copied(), calls.iter().copied()),
            want,
            "{reads:?} {calls:?}"
        );
    }
    assert!(r.is_user_function("wrapper") && !r.is_user_function("count"));
}
