//! pgbench through the proxy: initialise, then short read-only and write runs in each
//! pool mode and protocol; every transaction must succeed.

use crate::common::{self, start, Setup};

fn pgbench() -> std::process::Command {
    let bin = if std::path::Path::new("/usr/lib/postgresql/15/bin/pgbench").exists() {
        "/usr/lib/postgresql/15/bin/pgbench"
    } else {
        "pgbench"
    };
    std::process::Command::new(bin)
}

/// Runs pgbench and returns the number of processed transactions, asserting none failed.
fn bench(env: &common::Env, args: &[&str]) -> u64 {
    let (ok, out, err) = common::run_cmd(
        pgbench()
            .args(args)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &env.port().to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", "app"),
    );
    assert!(ok, "pgbench {args:?} failed:\n{out}\n{err}");
    let field = |name: &str| -> Option<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let failed = field("number of failed transactions:").unwrap_or(0);
    assert_eq!(failed, 0, "pgbench {args:?} reported failures:\n{out}");
    let done = field("number of transactions actually processed:").expect("pgbench summary");
    assert!(done > 0, "{out}");
    done
}

fn init(env: &common::Env) {
    let (ok, out, err) = common::run_cmd(
        pgbench()
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &env.port().to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", "app"),
    );
    assert!(ok, "pgbench -i failed:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_transaction_mode() {
    let env = start(Setup {
        tweak: |c| c.pool.size = 4,
        ..Default::default()
    })
    .await;
    tokio::task::block_in_place(|| {
        init(&env);
        bench(&env, &["-S", "-T", "3", "-c", "8", "-j", "2"]);
        bench(&env, &["-N", "-T", "3", "-c", "8", "-j", "2"]);
        bench(
            &env,
            &["-S", "-M", "extended", "-T", "2", "-c", "8", "-j", "2"],
        );
        // Named prepared statements on a pool smaller than the client count.
        bench(
            &env,
            &["-S", "-M", "prepared", "-T", "2", "-c", "8", "-j", "2"],
        );
        // pgbench prepares synchronously, blocking its thread's other clients; with
        // several clients per thread holding transactions open that deadlocks any
        // transaction pooler smaller than the client count, so one thread per client.
        bench(
            &env,
            &["-N", "-M", "prepared", "-T", "2", "-c", "8", "-j", "8"],
        );
    });
    // Writes through the proxy are really on the primary.
    let direct = env.direct().await;
    let n: i64 = direct
        .query_one("select count(*) from pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_session_mode() {
    let env = start(Setup {
        pool_mode: "session",
        ..Default::default()
    })
    .await;
    tokio::task::block_in_place(|| {
        init(&env);
        bench(&env, &["-S", "-T", "2", "-c", "4", "-j", "2"]);
        bench(
            &env,
            &["-N", "-M", "prepared", "-T", "2", "-c", "4", "-j", "2"],
        );
    });
}
