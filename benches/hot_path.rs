//! Micro-benchmarks of the per-message hot path: framing a batch of DataRows, the
//! expectation pipeline that follows a server's replies, and the routing decision.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgwarden::backend::prepared::PreparedSet;
use pgwarden::config::RoutingConfig;
use pgwarden::engine::exchange::pipeline::{Expect, Pipeline};
use pgwarden::protocol::frame::split_frame;
use pgwarden::router::analysis::analyze;
use pgwarden::router::plan::{plan, RequestPart, SessionView};
use std::hint::black_box;

/// `rows` DataRow messages of two text columns, like a small result set.
fn data_rows(rows: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..rows {
        let a = i.to_string();
        let v = "x".repeat(32);
        b.put_u8(b'D');
        b.put_u32((4 + 2 + 4 + a.len() + 4 + v.len()) as u32);
        b.put_u16(2);
        b.put_u32(a.len() as u32);
        b.put_slice(a.as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b
}

fn framing(c: &mut Criterion) {
    let batch = data_rows(1000);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("split 1000 DataRows", |b| {
        b.iter_batched(
            || batch.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = split_frame(&mut buf, 1 << 30).unwrap() {
                    n += f.data.len();
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("split + relay 1000 DataRows through the pipeline", |b| {
        b.iter_batched(
            || (batch.clone(), BytesMut::with_capacity(batch.len())),
            |(mut buf, mut out)| {
                let mut p = Pipeline::default();
                let mut prepared = PreparedSet::new(16);
                p.push(Expect::Execute);
                while let Some(f) = split_frame(&mut buf, 1 << 30).unwrap() {
                    if p.on_server(f.tag, f.body(), &mut prepared, &mut out) {
                        out.unsplit(f.data);
                    }
                }
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let read = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1", &[]);
    let write = analyze(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
        &[],
    );
    let cfg = RoutingConfig::default();
    let s = SessionView::default();
    let mut g = c.benchmark_group("router");
    g.bench_function("plan read", |b| {
        b.iter(|| black_box(plan(&[RequestPart::Sql(&read, None)], &s, true, &cfg)))
    });
    g.bench_function("plan write", |b| {
        b.iter(|| black_box(plan(&[RequestPart::Sql(&write, None)], &s, true, &cfg)))
    });
    g.finish();
}

criterion_group!(benches, framing, routing);
criterion_main!(benches);
