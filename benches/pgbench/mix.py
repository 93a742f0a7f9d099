#!/usr/bin/env python3
"""The 10% write mix through direct PostgreSQL, PgBouncer and pgwarden, with one replica
stopped, in one run.

Starts the sandbox (primary + 2 streaming replicas), creates t_hot and t_cold (1000 rows
each), pauses replay on replica1, then starts PgBouncer (pool to the primary) and pgwarden
(primary + both replicas, transaction pooling). For each synchronous_commit setting it
runs pgbench with mix.sql (10% UPDATE of t_hot, 45% reads of t_hot, 45% of t_cold) through
each path, the paths in alternation round by round. Around every pgwarden run it reads
the servers' own table statistics, to tell where the reads of each table ran, and
pgwarden's /metrics. Then stale.py counts stale reads through each path. Prints a
markdown report and writes it to /tmp. Usually run through ./mix beside this file.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import stale
from compare import Path, conn_args, interrupt, log, pgbench_bin, pgbench_env
from topology import (APP_DB, APP_PASSWORD, APP_USER, Children, Poolers, Sandbox, free_port,
                      merge)

MIX_SQL = """\\set id random(1, 1000)
\\set r random(1, 100)
\\if :r <= 10
UPDATE t_hot SET v = v + 1 WHERE id = :id RETURNING v;
\\elif :r <= 55
SELECT v FROM t_hot WHERE id = :id;
\\else
SELECT v FROM t_cold WHERE id = :id;
\\endif
"""
# --script hot-reads: the cache's workload, repeated reads of a hot set (no writes).
HOT_READS_SQL = """\\set id random(1, 100)
SELECT v FROM t_hot WHERE id = :id;
"""
SCRIPTS = {"mix": MIX_SQL, "hot-reads": HOT_READS_SQL}
TABLES = ("t_hot", "t_cold")
PATHS = ("direct", "pgbouncer", "pgwarden", "pgwarden-cache")
NODES = ("primary", "replica1", "replica2")
DECISIONS = ("replica", "waited", "primary_fallback", "primary_at_once", "multiplexed")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgwarden", required=True, help="release pgwarden binary")
    ap.add_argument("-T", "--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell (median reported)")
    ap.add_argument("--sync", default="on,off", help="synchronous_commit settings, in order")
    ap.add_argument("--protocol", choices=("simple", "extended", "prepared"),
                    default="extended", help="pgbench -M, and the stale check's messages")
    ap.add_argument("--clients", type=int, default=8, help="pgbench -c and stale-check sessions")
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j")
    ap.add_argument("--pool-size", type=int, default=10,
                    help="per node (pgwarden) / per db+user (PgBouncer)")
    ap.add_argument("--consistency", choices=("strict", "session", "eventual"),
                    help="pgwarden consistency.mode (default: pgwarden's own)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pgwarden setting for this run, e.g. pool.multiplex_reads=off "
                         "(VALUE read as JSON where it parses, else a string); repeatable")
    ap.add_argument("--check-seconds", type=float, default=5,
                    help="stale check per path and sync setting (0: skip)")
    ap.add_argument("--settle-timeout", type=float, default=20,
                    help="longest wait for the servers' table statistics to be flushed")
    ap.add_argument("--no-pause", action="store_true",
                    help="leave replica1 replaying: a control run for the paused one")
    ap.add_argument("--script", choices=sorted(SCRIPTS), default="mix",
                    help="mix: the 10%% write mix; hot-reads: SELECTs of 100 hot rows")
    ap.add_argument("--cache", action="store_true",
                    help="also run path pgwarden-cache: pgwarden with cache.mode all-safe")
    ap.add_argument("--out", help="report file (default /tmp/pgwarden-mix-<time>.md)")
    a = ap.parse_args()
    a.sync = a.sync.split(",")  # PostgreSQL rejects a bad value at the first ALTER SYSTEM
    a.out = a.out or time.strftime("/tmp/pgwarden-mix-%Y%m%d-%H%M%S.md")
    return a


def setup(sandbox: Sandbox, pause: bool):
    """The two tables, on every replica, then replica1's replay paused."""
    for t in TABLES:
        sandbox.psql(sandbox.primary, f"CREATE TABLE {t}(id int PRIMARY KEY, v bigint); "
                     f"INSERT INTO {t} SELECT g, 0 FROM generate_series(1, 1000) g; "
                     f"ALTER TABLE {t} OWNER TO {APP_USER}; ANALYZE {t}")
    sandbox.wait_replicas_caught_up()
    if not pause:
        return
    sandbox.psql(sandbox.replicas[0], "SELECT pg_wal_replay_pause()")
    state = sandbox.psql(sandbox.replicas[0], "SELECT pg_get_wal_replay_pause_state()")
    if state not in ("paused", "pause requested"):
        raise RuntimeError(f"replica1 replay not paused: {state}")


def set_sync(sandbox: Sandbox, value: str, timeout=10.0):
    sandbox.psql(sandbox.primary, f"ALTER SYSTEM SET synchronous_commit = {value}")
    sandbox.psql(sandbox.primary, "SELECT pg_reload_conf()")
    # The reload is asynchronous: a new session sees it once the postmaster has read it.
    deadline = time.monotonic() + timeout
    while sandbox.psql(sandbox.primary, "SHOW synchronous_commit") != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"synchronous_commit did not become {value} in {timeout}s")
        time.sleep(0.1)


def table_stats(sandbox: Sandbox) -> dict:
    """{(node, table): (scans, updated rows)}. Scans: index + sequential. A standby counts
    the scans of queries run on it; n_tup_upd is the primary's own UPDATEs."""
    out = {}
    for node, port in zip(NODES, [sandbox.primary, *sandbox.replicas]):
        rows = sandbox.psql(port, "SELECT relname, seq_scan + coalesce(idx_scan, 0), n_tup_upd"
                                  " FROM pg_stat_user_tables WHERE relname IN ('t_hot', 't_cold')")
        for line in rows.splitlines():
            name, scans, upd = line.split("|")
            out[(node, name)] = (int(scans), int(upd))
    return out


def total_scans(stats: dict) -> int:
    return sum(scans for scans, _ in stats.values())


def settle(sandbox: Sandbox, expected: int, timeout: float) -> tuple[dict, str]:
    """Table statistics once every statement run so far is in them, and a note if not.

    A backend flushes its counters at most once a second, and an idle one up to 10 s
    later (PGSTAT_IDLE_INTERVAL): pooled server connections hold the last run's counts
    that long. Every statement of the mix scans its table's index once, so the total
    over both tables and all nodes must reach the number of statements run."""
    deadline = time.monotonic() + timeout
    while True:
        stats = table_stats(sandbox)
        got = total_scans(stats)
        if got == expected:
            return stats, ""
        if time.monotonic() > deadline:
            return stats, (f"table statistics did not settle in {timeout:.0f} s: "
                           f"{got} scans counted, {expected} statements run")
        time.sleep(0.25)


def read_shares(before: dict, after: dict) -> dict:
    """{table: {node: reads}} between two snapshots; the primary's t_hot scans less its
    UPDATEs (each updates one row, found through the same index)."""
    shares = {}
    for t in TABLES:
        d = {n: after[(n, t)][0] - before[(n, t)][0] for n in NODES}
        d["primary"] -= after[("primary", t)][1] - before[("primary", t)][1]
        shares[t] = d
    return shares


def replica_pct(reads: dict[str, int]) -> float | None:
    total = sum(reads.values())
    return 100 * (reads["replica1"] + reads["replica2"]) / total if total else None


def scrape(admin_port: int) -> dict[str, float]:
    """Every sample of /metrics, keyed by its series (name{labels})."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def decisions(before: dict, after: dict) -> dict[str, int]:
    key = 'pgwarden_reads_total{{decision="{}"}}'
    return {d: int(after.get(key.format(d), 0) - before.get(key.format(d), 0)) for d in DECISIONS}


def routes(before: dict, after: dict) -> dict[str, int]:
    """Non-zero deltas of pgwarden_queries_total, as {"route/reason": n}."""
    out = {}
    for series, v in after.items():
        m = re.match(r'pgwarden_queries_total\{route="(\w+)",reason="(\w+)"\}', series)
        if m and v - before.get(series, 0):
            out[f"{m.group(1)}/{m.group(2)}"] = int(v - before.get(series, 0))
    return out


def cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def run_pgbench(a, port: int, script: str) -> tuple[float, int, float] | str:
    """(tps, transactions processed, % of CPU idle meanwhile), or the first error line of
    a failed run. Idle CPU means the path waited on something other than the cores."""
    argv = [pgbench_bin(), *conn_args(port), "-n", "-c", str(a.clients), "-j", str(a.threads),
            "-T", str(a.duration), "-M", a.protocol, "-f", script, APP_DB]
    idle0, total0 = cpu_times()
    try:
        out = subprocess.run(argv, env=pgbench_env(), capture_output=True, text=True,
                             timeout=a.duration + 120)
    except subprocess.TimeoutExpired:
        return f"pgbench still running after {a.duration + 120} s"
    stats = dict(l.split(" = ", 1) for l in out.stdout.splitlines() if " = " in l)
    done = next((int(l.split(":")[1]) for l in out.stdout.splitlines()
                 if l.startswith("number of transactions actually processed")), 0)
    errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
    if out.returncode != 0 or errors or "tps" not in stats:
        return (errors[0] if errors else out.stderr.strip()[-300:]) or "no tps"
    idle1, total1 = cpu_times()
    idle = 100 * (idle1 - idle0) / max(total1 - total0, 1)
    return float(stats["tps"].split()[0]), done, idle


def benchmark(a, sandbox: Sandbox, endpoints: dict, admin_port: int, workdir: str) -> dict:
    """{sync: {"tps": {path: [..]}, "errors": {path: str}, "runs": [pgwarden run dicts],
    "stale": {path: Counts | str}}}."""
    script = os.path.join(workdir, "mix.sql")
    with open(script, "w") as f:
        f.write(SCRIPTS[a.script])
    results, expected = {}, total_scans(table_stats(sandbox))
    total, n = len(a.sync) * a.rounds * len(endpoints), 0
    for sync in a.sync:
        set_sync(sandbox, sync)
        res = results[sync] = {"tps": {}, "errors": {}, "runs": [], "stale": {}}
        for r in range(a.rounds):
            for name, port in endpoints.items():
                n += 1
                if name == "pgwarden":
                    before, note0 = settle(sandbox, expected, a.settle_timeout)
                    expected, m0 = total_scans(before), scrape(admin_port)
                hits0 = cache_hits(a, name)
                out = run_pgbench(a, port, script)
                if isinstance(out, str):
                    res["errors"].setdefault(name, out)
                    log(f"[{n}/{total}] sync={sync} round {r + 1} {name:9} failed: {out}")
                    expected = total_scans(table_stats(sandbox))  # unknown; start again
                    continue
                tps, done, idle = out
                expected += done - cache_hits(a, name, hits0)
                res["tps"].setdefault(name, []).append(tps)
                shown = ""
                if name == "pgwarden":
                    after, note1 = settle(sandbox, expected, a.settle_timeout)
                    m1 = scrape(admin_port)
                    run = {"tps": tps, "reads": read_shares(before, after),
                           "decisions": decisions(m0, m1), "routes": routes(m0, m1),
                           "lag_ms": m1.get('pgwarden_replica_lag_ms{node="replica1"}'),
                           "note": "; ".join(x for x in (note0, note1) if x)}
                    res["runs"].append(run)
                    expected = total_scans(after)
                    shown = "  " + run_summary(run)
                log(f"[{n}/{total}] sync={sync} round {r + 1} {name:9} {tps:8.0f} ops/s, {idle:4.1f}% CPU idle{shown}")
        if a.check_seconds > 0:
            for name, port in endpoints.items():
                try:
                    hits0 = cache_hits(a, name)
                    c = stale.check(port, a.clients, a.check_seconds, a.protocol, APP_USER,
                                    APP_PASSWORD, APP_DB)
                except Exception as e:  # a refused login or a dropped connection
                    res["stale"][name] = f"n/a ({e!r:.150})"
                    log(f"stale check sync={sync} {name}: {res['stale'][name]}")
                    continue
                res["stale"][name] = c
                expected += c.statements - cache_hits(a, name, hits0)
                log(f"stale check sync={sync} {name:9} {c.statements} statements, "
                    f"stale {c.stale_own} own / {c.stale_any} any, {c.errors} errors")
    return results


def cache_hits(a, path: str, since: int = 0) -> int:
    """Reads path pgwarden-cache answered from its cache (they scan no table), less
    `since`; 0 for the other paths."""
    if path != "pgwarden-cache":
        return 0
    m = scrape(a.cache_admin)
    return int(sum(v for k, v in m.items() if k.startswith("pgwarden_cache_hits_total"))) - since


def run_summary(run: dict) -> str:
    pct = {t: replica_pct(run["reads"][t]) for t in TABLES}
    d = run["decisions"]
    return (f"t_hot {fmt_pct(pct['t_hot'])} / t_cold {fmt_pct(pct['t_cold'])} on replicas; "
            + ", ".join(f"{k} {v}" for k, v in d.items()))


def median_pct(runs: list[dict], table: str) -> float | None:
    pcts = [p for p in (replica_pct(r["reads"][table]) for r in runs) if p is not None]
    return statistics.median(pcts) if pcts else None


def fmt_pct(p: float | None) -> str:
    return "—" if p is None else f"{p:.1f}%"


def report(a, results: dict, versions: str, command: str) -> str:
    out = ["# The 10% write mix: direct PostgreSQL vs PgBouncer vs pgwarden", "",
           f"`{command}`", "", versions, "",
           f"pgbench -n -c {a.clients} -j {a.threads} -T {a.duration} -M {a.protocol} -f mix.sql,"
           f" ({a.script}), {a.rounds} round(s), median ops/s (one statement per transaction); pool size "
           f"{a.pool_size}; pgwarden consistency mode {a.consistency or 'default (strict)'}; "
           f"{os.cpu_count()} CPUs shared by PostgreSQL x3, the poolers and pgbench.", "",
           "Mix: 10% `UPDATE t_hot ... RETURNING v`, 45% `SELECT` of t_hot, 45% of t_cold "
           "(1000 rows each, random id). "
           + ("Both replicas keep replaying (--no-pause). " if a.no_pause else
              "Replay on replica1 is paused before the poolers start: only replica2 can "
              "have t_hot's writes, and replica1 leaves the lag budget (max_lag_ms) once "
              "its last replayed commit is that old. ")
           + "Direct and PgBouncer use the primary only.", "",
           "Reads on replicas: the servers' own pg_stat_user_tables scans around each "
           "pgwarden run (the primary's t_hot scans less its UPDATEs). Decisions: deltas of "
           "pgwarden_reads_total, summed over the rounds. Stale reads: a separate "
           f"{a.check_seconds:g}-s run of the same mix per path ({a.clients} sessions, "
           "benches/pgbench/stale.py): own = below the session's own last write of that id; "
           "any = below the highest write of it acknowledged to any session before the "
           "read was sent.", ""]
    for sync, res in results.items():
        out += [f"## synchronous_commit = {sync}", ""]
        med = {p: statistics.median(v) for p, v in res["tps"].items()}
        head = ["path", "ops/s", "vs PgBouncer", "vs direct", "t_hot reads on replicas",
                "t_cold reads on replicas", "decisions (" + " / ".join(DECISIONS) + ")",
                "stale reads (own / any)"]
        out += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for path in (p for p in PATHS if p in res["tps"] or p in res["errors"]):
            cells = [path, f"{med[path]:.0f}" if path in med else
                     f"n/a ({res['errors'].get(path, '?')[:80]})"]
            cells += [ratio(med, path, "pgbouncer"), ratio(med, path, "direct")]
            if path == "pgwarden" and res["runs"]:
                cells += [fmt_pct(median_pct(res["runs"], t)) for t in TABLES]
                sums = {d: sum(r["decisions"][d] for r in res["runs"]) for d in DECISIONS}
                cells.append(" / ".join(str(sums[d]) for d in DECISIONS))
            else:
                cells += ["—", "—", "—"]
            cells.append(stale_cell(res["stale"].get(path)))
            out.append("| " + " | ".join(cells) + " |")
        out += [""] + run_table(res["runs"]) + stale_table(res["stale"])
    return "\n".join(out)


def ratio(med: dict, x: str, y: str) -> str:
    return f"{med[x] / med[y]:.2f}" if x in med and y in med and med[y] and x != y else "—"


def stale_cell(c) -> str:
    if c is None:
        return "not run"
    return c if isinstance(c, str) else f"{c.stale_own} / {c.stale_any}"


def run_table(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    out = ["pgwarden runs: reads of each table by node (primary / replica1 / replica2), "
           "pgwarden_reads_total deltas, pgwarden_queries_total deltas (route/reason), "
           "replica1's lag at the end of the run (pgwarden's gauge).", "",
           "| round | ops/s | t_hot reads | t_cold reads | " + " | ".join(DECISIONS)
           + " | queries | replica1 lag ms | note |",
           "|---:|---:|---|---|" + "---:|" * len(DECISIONS) + "---|---:|---|"]
    for i, r in enumerate(runs, 1):
        by_node = [" / ".join(str(r["reads"][t][n]) for n in NODES) for t in TABLES]
        lag = "—" if r["lag_ms"] is None else f"{r['lag_ms']:.0f}"
        out.append(f"| {i} | {r['tps']:.0f} | {by_node[0]} | {by_node[1]} | "
                   + " | ".join(str(r["decisions"][d]) for d in DECISIONS)
                   + " | " + ", ".join(f"{k} {v}" for k, v in sorted(r["routes"].items()))
                   + f" | {lag} | {r['note']} |")
    return out + [""]


def stale_table(checks: dict) -> list[str]:
    rows = [(p, c) for p, c in checks.items() if not isinstance(c, str)]
    if not rows:
        return []
    out = ["Stale check: statements completed, stale reads, worst (acknowledged v − read v).",
           "", "| path | writes | t_hot reads | t_cold reads | stale own | stale any | worst "
           "| errors |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p, c in rows:
        err = f"{c.errors} ({c.first_error[:80]})" if c.errors else "0"
        out.append(f"| {p} | {c.writes} | {c.hot_reads} | {c.cold_reads} | {c.stale_own} | "
                   f"{c.stale_any} | {c.worst_behind} | {err} |")
    return out + [""]


def versions(a, sandbox: Sandbox) -> str:
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    here = os.path.dirname(os.path.abspath(__file__))
    commit = first_line(["git", "-C", here, "describe", "--always", "--dirty"])
    server = sandbox.psql(sandbox.primary, "SHOW server_version")
    return (f"{first_line([a.pgwarden, '--version'])} (`{a.pgwarden}`, tree at {commit}); "
            f"PostgreSQL {server}; {first_line([pgbench_bin(), '--version'])}; "
            f"{first_line(['pgbouncer', '--version'])}")


def start_poolers(a, children: Children, sandbox: Sandbox, workdir: str
                  ) -> tuple[dict[str, int], int]:
    """{path: port} in run order, and pgwarden's admin (metrics) port."""
    admin = free_port()
    extra = {"admin_listen": f"127.0.0.1:{admin}"}
    if a.consistency:
        extra["consistency"] = {"mode": a.consistency}
    for setting in a.set:
        key, _, value = setting.partition("=")
        *parents, leaf = key.split(".")
        node = extra
        for k in parents:
            node = node.setdefault(k, {})
        try:
            node[leaf] = json.loads(value)
        except ValueError:
            node[leaf] = value
    poolers = Poolers(children, sandbox, a.pgwarden, None, workdir, max_clients=a.clients + 100)
    paths = [Path("direct", "direct"), Path("pgbouncer", "pgbouncer"),
             Path("pgwarden", "pgwarden", extra)]
    if a.cache:
        a.cache_admin = free_port()
        cached = merge(extra, {"admin_listen": f"127.0.0.1:{a.cache_admin}",
                               "cache": {"mode": "all-safe"}})
        paths.append(Path("pgwarden-cache", "pgwarden", cached))
    return {p.name: poolers.endpoint(p, a.pool_size).port for p in paths}, admin


def main():
    a = parse_args()
    command = os.environ.get("PGWARDEN_MIX_COMMAND") or shlex.join(sys.argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below tears everything down.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)
    workdir = tempfile.mkdtemp(prefix="pgwarden-mix-")
    os.chmod(workdir, 0o755)  # PgBouncer runs as postgres and reads its config from here
    children, ok = Children(), False
    try:
        log(f"starting the sandbox (logs in {workdir})")
        sandbox = Sandbox(children, a.pgwarden, workdir)
        log(f"primary :{sandbox.primary}, replicas {sandbox.replicas}; creating t_hot, t_cold")
        setup(sandbox, not a.no_pause)
        endpoints, admin = start_poolers(a, children, sandbox, workdir)
        log(f"replica1 {'replaying' if a.no_pause else 'paused'}; paths {endpoints}, pgwarden metrics on :{admin}")
        results = benchmark(a, sandbox, endpoints, admin, workdir)
        text = report(a, results, versions(a, sandbox), command)
        with open(a.out, "w") as f:
            f.write(text + "\n")
        print(text)
        log(f"report written to {a.out}")
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip teardown
        log("stopping the poolers and the sandbox...")
        children.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
