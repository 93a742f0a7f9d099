//! Cost of classifying a typical OLTP query on the router's hot path: fingerprint alone, a
//! parse-cache hit (the usual case), a full sqlparser analysis (a cache miss), lifting
//! its literals into parameters (pool.auto_prepare), and both of the latter in one lexer pass
//! (what routing does for a simple Query).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgwarden::router::analysis::analyze;
use pgwarden::router::fingerprint::{fingerprint, fingerprint_and_lift};
use pgwarden::router::parameterize::parameterize;
use pgwarden::router::parse_cache::ParseCache;

/// pgbench's read and write statements, with the literal varied by `n`.
fn select(n: u32) -> String {
    format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}")
}

fn update(n: u32) -> String {
    format!(
        "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {n}",
        n % 1000
    )
}

fn bench_query(c: &mut Criterion, name: &str, make: fn(u32) -> String) {
    let mut group = c.benchmark_group(name);
    let fixed = make(12345);
    // Different literals each iteration: a real hit is a different string with the same
    // fingerprint, not the same string over and over.
    let variants: Vec<String> = (0..1024).map(|i| make(i * 7919 + 1)).collect();

    group.bench_function("fingerprint", |b| b.iter(|| fingerprint(black_box(&fixed))));

    let cache = ParseCache::new(10_000, Vec::new());
    cache.analyze(&fixed);
    let mut i = 0;
    group.bench_function("parse_cache_hit", |b| {
        b.iter(|| {
            i = (i + 1) % variants.len();
            cache.analyze(black_box(&variants[i]))
        })
    });

    group.bench_function("analyze_miss", |b| {
        b.iter(|| analyze(black_box(&fixed), black_box(&[])))
    });

    group.bench_function("parameterize", |b| {
        b.iter(|| parameterize(black_box(&fixed)))
    });

    group.bench_function("fingerprint_and_lift", |b| {
        b.iter(|| fingerprint_and_lift(black_box(&fixed)))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_query(c, "oltp_select", select);
    bench_query(c, "oltp_update", update);
}

criterion_group!(analysis, benches);
criterion_main!(analysis);
