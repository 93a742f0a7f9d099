//! FunctionCall ('F').

use super::*;

/// psql's \lo_import and \lo_export go through libpq's fastpath: FunctionCall messages
/// (lo_creat, lo_open, lowrite/loread, lo_close) inside a transaction psql opens.
async fn large_object_round_trip(env: &Env) {
    let dir = tempfile::TempDir::new().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let script = dir.path().join("lo.sql");
    // ~20 kB of every byte value: several 8 kB lowrite/loread calls.
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(7) % 256) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    std::fs::write(
        &script,
        format!(
            "\\lo_import '{}'\n\\lo_export :LASTOID '{}'\n",
            input.display(),
            output.display()
        ),
    )
    .unwrap();
    let mut cmd = common::psql(&env.dsn("app", "app", "app"));
    cmd.arg("-f").arg(&script);
    let (ok, out, err) = common::run_cmd_async(cmd).await;
    assert!(ok, "psql failed: {out}\n{err}");
    assert!(out.contains("lo_import "), "psql output: {out}");

    let got = std::fs::read(&output).expect("\\lo_export wrote the file");
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "exported large object differs from the imported file"
    );

    // Stored and committed on the server.
    let direct = env.direct().await;
    let row = direct
        .query_one(
            "select (select count(*) from pg_largeobject_metadata), \
                    (select sum(length(data))::int8 from pg_largeobject)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(data.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_via_psql_large_objects_session_mode() {
    large_object_round_trip(&start_mode("session").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_via_psql_large_objects_transaction_mode() {
    large_object_round_trip(&start_mode("transaction").await).await;
}
