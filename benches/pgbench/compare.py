#!/usr/bin/env python3
"""pgbench through direct PostgreSQL, PgBouncer and pgwarden, on one machine, in one run.

Starts the sandbox (primary + 2 streaming replicas), then one pooler per (path, pool size),
and runs every workload x client count x round with the paths in alternation (A B C A B C
...), so slow drift of the machine (other load, cache warmth, table bloat from -N) hits
every path alike. Prints one markdown table per workload with medians over the rounds, then
memory figures, and writes the same report to /tmp. Usually run through ./run beside this
file, which builds the release binary first.
"""

import argparse
import asyncio
import glob
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import cpu
import idle
from topology import APP_DB, APP_PASSWORD, APP_USER, Children, Poolers, Sandbox, rss_bytes


@dataclass
class Path:
    name: str
    kind: str             # direct | pgwarden | pgbouncer | forward
    # Settings merged over the benchmark's pgwarden config (same shape as config.yaml).
    pgwarden: dict = field(default_factory=dict)
    # Another pgwarden binary than --pgwarden (for A/B of two builds; see --baseline).
    binary: str | None = None


# Adding a path is one line here; RATIOS picks which TPS ratios get a column.
PATHS = [
    Path("direct", "direct"),
    Path("pgbouncer", "pgbouncer"),
    Path("pgwarden", "pgwarden"),
    # Path("pgwarden+cache", "pgwarden", {"cache": {"enabled": True}}),
]
# Not run unless named in --paths.
EXTRA_PATHS = [
    # What commit-position capture costs a write: the same proxy without it.
    Path("pgwarden-nocapture", "pgwarden", {"consistency": {"capture_commits": False}}),
    # What running simple Queries as server-side prepared statements brings.
    Path("pgwarden-noprepare", "pgwarden", {"pool": {"auto_prepare": False}}),
    # Without shared read lanes (on by default, in auto mode).
    Path("pgwarden-nolanes", "pgwarden", {"pool": {"multiplex_reads": "off"}}),
    # Lanes for every read, not only while the replica is busy.
    Path("pgwarden-lanes-always", "pgwarden", {"pool": {"multiplex_reads": "always"}}),
    # Two worker threads where the default (0: one per core, but one on <= 2 cores) picks
    # one: what the second thread costs or brings on this machine.
    Path("pgwarden-2threads", "pgwarden", {"worker_threads": 2}),
    # The floor for any TCP proxy here: a forwarder that copies bytes between each client
    # and a server connection of its own (examples/tcp_forward.rs), to the primary.
    Path("tcp-forward", "forward"),
]
RATIOS = [("pgwarden", "direct"), ("pgwarden", "pgbouncer"), ("tcp-forward", "direct"),
          ("pgwarden", "tcp-forward"), ("pgwarden", "pgwarden-nocapture"),
          ("pgwarden", "pgwarden-noprepare"), ("pgwarden", "pgwarden-nolanes"),
          ("pgwarden-lanes-always", "pgbouncer"), ("pgwarden", "pgwarden-baseline")]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    args: tuple[str, ...] = ()
    script: str | None = None  # custom pgbench script, passed with -f


# -M prepared is only combined with -S: pgbench prepares synchronously (PQprepare), so with
# several clients per thread, one waiting for a pooled server connection blocks the thread
# while its siblings hold transactions open (-N) -> deadlock in any transaction pooler. A
# prepared write workload would need -j equal to the client count.
UPDATE_SCRIPT = ("\\set aid random(1, 100000 * :scale)\n"
                 "\\set delta random(-5000, 5000)\n"
                 "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n")
WORKLOADS = [
    Workload("select", "SELECT-only, simple protocol (-S)", ("-S",)),
    Workload("select-extended", "SELECT-only, extended protocol (-S -M extended)",
             ("-S", "-M", "extended")),
    Workload("select-prepared", "SELECT-only, prepared statements (-S -M prepared)",
             ("-S", "-M", "prepared")),
    Workload("simple-update", "simple-update, read-write transactions (-N)", ("-N",)),
    # One autocommit write per transaction: the commit-position capture's cost per write.
    Workload("update-only", "update-only (custom script: one autocommit UPDATE)",
             script=UPDATE_SCRIPT),
    # Few distinct keys: the shape a result cache is for (and the best case for one).
    Workload("hot-set", "hot-set reads (custom script: 1000 hot rows)",
             script="\\set aid random(1, 1000)\n"
                    "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"),
]
# Not run unless named in --workloads.
EXTRA_WORKLOADS = [
    # The autocommit write on the extended protocol's unnamed statement, as drivers send it.
    Workload("update-extended", "update-only, extended protocol (custom script, -M extended)",
             ("-M", "extended"), script=UPDATE_SCRIPT),
]

CLIENTS = [1, 8, 64, 512]
QUICK_CLIENTS = [8, 64, 512]
# The sandbox has max_connections = 200, and the poolers keep their own connections open.
# Paths of these kinds open one server connection per client.
DIRECT_MAX_CLIENTS = 100
UNPOOLED = ("direct", "forward")
LARGE_CLIENTS = 512   # from this many clients on, poolers get --large-pool-size
RSS_LOAD_CLIENTS = 64  # pooler RSS is sampled during the runs with this many clients


@dataclass
class Result:
    tps: float
    avg_ms: float
    p99_ms: float
    connect_ms: float  # pgbench's initial connection time (all clients), progress log only
    # With --cpu: (pooler, of which user, PostgreSQL, pgbench) µs per transaction.
    cpu_us: tuple[float, float, float, float] | None = None


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgwarden", required=True, help="release pgwarden binary")
    ap.add_argument("--forwarder", help="tcp_forward example binary, for path tcp-forward "
                    "(default: examples/tcp_forward next to --pgwarden)")
    ap.add_argument("--baseline", help="another pgwarden binary, run as path pgwarden-baseline "
                    "(add it to --paths): A/B of two builds in one run")
    ap.add_argument("-T", "--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell (median reported)")
    ap.add_argument("--clients", help=f"comma-separated client counts (default {CLIENTS})")
    ap.add_argument("--workloads", help="comma-separated keys: "
                    + ",".join(w.key for w in WORKLOADS) + " (default), "
                    + ",".join(w.key for w in EXTRA_WORKLOADS))
    ap.add_argument("--paths", help="comma-separated path names: "
                    + ",".join(p.name for p in PATHS) + " (default), "
                    + ",".join(p.name for p in EXTRA_PATHS))
    ap.add_argument("--server-socket", choices=("tcp", "unix"), default="tcp",
                    help="how the poolers reach PostgreSQL: loopback TCP (default), or each "
                         "node's Unix socket, as a pooler on the database host would")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    ap.add_argument("--threads", type=int, default=2,
                    help="pgbench -j cap (-j = min(clients, cap))")
    ap.add_argument("--pool-size", type=int, default=10, help="per node (pgwarden) / per db+user"
                    " (PgBouncer), below LARGE_CLIENTS clients")
    ap.add_argument("--large-pool-size", type=int, default=20)
    ap.add_argument("--idle-clients", type=int, default=10000, help="for the memory figures")
    ap.add_argument("--sampling-rate", type=float, default=1.0,
                    help="pgbench --sampling-rate for the p99 logs (lower it for long runs)")
    ap.add_argument("--cpu", action="store_true",
                    help="also report CPU per transaction: pooler (user), PostgreSQL, pgbench")
    ap.add_argument("--quick", action="store_true",
                    help=f"-T 5, 1 round, clients {QUICK_CLIENTS}: checks the harness, "
                         "not a result")
    ap.add_argument("--out", help="report file (default /tmp/pgwarden-pgbench-<time>.md)")
    a = ap.parse_args()
    if a.quick:
        # Not shorter: -T includes the logins, and 512 SCRAM logins take pgbench ~2 s here.
        a.duration, a.rounds = 5, 1
        a.clients = a.clients or ",".join(map(str, QUICK_CLIENTS))
    a.clients = [int(c) for c in a.clients.split(",")] if a.clients else CLIENTS
    a.workloads = (pick(WORKLOADS + EXTRA_WORKLOADS, a.workloads, lambda w: w.key)
                   if a.workloads else WORKLOADS)
    extra = EXTRA_PATHS + ([Path("pgwarden-baseline", "pgwarden", binary=a.baseline)]
                           if a.baseline else [])
    a.paths = pick(PATHS + extra, a.paths, lambda p: p.name) if a.paths else PATHS
    a.forwarder = a.forwarder or os.path.join(os.path.dirname(a.pgwarden), "examples",
                                              "tcp_forward")
    a.out = a.out or time.strftime("/tmp/pgwarden-pgbench-%Y%m%d-%H%M%S.md")
    return a


def pick(items, wanted, key):
    if not wanted:
        return items
    names = wanted.split(",")
    unknown = set(names) - {key(i) for i in items}
    if unknown:
        sys.exit(f"unknown: {', '.join(sorted(unknown))}")
    return [i for i in items if key(i) in names]


def pgbench_bin() -> str:
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return versioned[-1] if versioned else shutil.which("pgbench") or sys.exit("no pgbench")


def pgbench_env() -> dict:
    return {**os.environ, "PGPASSWORD": APP_PASSWORD, "PGSSLMODE": "disable"}


def conn_args(port: int) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(port), "-U", APP_USER]


class RssSampler:
    """Highest VmRSS of a process while the block runs."""

    def __init__(self, pid: int | None):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        if self.pid:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid:
            self._thread.join()


def run_pgbench(a, w: Workload, clients: int, port: int, workdir: str,
                counted: tuple[int | None, list[int]] | None = None
                ) -> Result | tuple[str, str]:
    """A Result, or (table cell, first error line) when the run failed. With `counted`
    (pooler pid or None, postmaster pids), the Result carries CPU per transaction."""
    logdir = tempfile.mkdtemp(dir=workdir, prefix="log-")
    argv = [pgbench_bin(), *conn_args(port), "-n", "-c", str(clients),
            "-j", str(min(clients, a.threads)), "-T", str(a.duration),
            "-l", "--log-prefix", os.path.join(logdir, "tx"), *w.args]
    if a.sampling_rate < 1:
        argv += ["--sampling-rate", str(a.sampling_rate)]
    if w.script:
        argv += ["-f", os.path.join(workdir, f"{w.key}.sql")]
    argv.append(APP_DB)
    before = cpu.snapshot(*counted) if counted else None
    try:
        # The timeout turns a pooler deadlock into a recorded failure instead of a hang.
        out = subprocess.run(argv, env=pgbench_env(), capture_output=True, text=True,
                             timeout=a.duration + 120)
        used = cpu.snapshot(*counted) - before if counted else None
        latencies = read_latencies(logdir)
    except subprocess.TimeoutExpired:
        return "n/a (timeout)", f"pgbench still running after {a.duration + 120} s"
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    failed = next((l for l in out.stdout.splitlines() if l.startswith("number of failed")), "")
    if out.returncode != 0 or (failed and not failed.split(":")[1].strip().startswith("0")):
        errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
        return "n/a (errors)", (errors[0] if errors else out.stderr.strip()[-300:])
    stats = dict(l.split(" = ", 1) for l in out.stdout.splitlines() if " = " in l)
    if not latencies:
        # -T counts from before the clients connect: slow logins can use up a short run.
        return "n/a (no transactions)", ("no transaction completed; initial connection time "
                                         + stats.get("initial connection time", "?"))
    done = next((int(l.split(":")[1].split()[0]) for l in out.stdout.splitlines()
                 if l.startswith("number of transactions actually processed")), 0)
    return Result(tps=float(stats["tps"].split()[0]),
                  avg_ms=float(stats["latency average"].split()[0]),
                  p99_ms=percentile(latencies, 0.99) / 1000,
                  connect_ms=float(stats.get("initial connection time", "nan").split()[0]),
                  cpu_us=cpu.per_transaction(used, done) if used else None)


def read_latencies(logdir: str) -> list[int]:
    """Per-transaction latencies in microseconds from pgbench -l files (one per thread)."""
    lat = []
    for f in glob.glob(os.path.join(logdir, "tx.*")):
        with open(f) as fh:
            for line in fh:
                fields = line.split(maxsplit=3)
                if len(fields) > 2 and fields[2].isdigit():  # not 'failed' / 'skipped'
                    lat.append(int(fields[2]))
    return lat


def percentile(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[max(0, math.ceil(q * len(values)) - 1)]


def pool_size_for(a, clients: int) -> int:
    return a.large_pool_size if clients >= LARGE_CLIENTS else a.pool_size


def benchmark(a, poolers: Poolers, workdir: str):
    """Returns {(workload key, clients, path name): [Result | (error, detail)]} and peak RSS."""
    results, rss_under_load = {}, {}
    postmasters = poolers.sandbox.postmasters() if a.cpu else []
    plan = [(w, c) for w in a.workloads for c in a.clients]
    total = sum(len(paths_for(a, c)) for _, c in plan) * a.rounds
    n = 0
    for w, c in plan:
        if w.script:
            with open(os.path.join(workdir, f"{w.key}.sql"), "w") as f:
                f.write(w.script)
        for r in range(a.rounds):
            for p in paths_for(a, c):
                n += 1
                ep = poolers.endpoint(p, pool_size_for(a, c))
                counted = (ep.pid, postmasters) if a.cpu else None
                with RssSampler(ep.pid if c == RSS_LOAD_CLIENTS else None) as rss:
                    res = run_pgbench(a, w, c, ep.port, workdir, counted)
                if rss.peak:
                    rss_under_load[p.name] = max(rss_under_load.get(p.name, 0), rss.peak)
                results.setdefault((w.key, c, p.name), []).append(res)
                shown = (f"{res.tps:9.0f} tps  avg {res.avg_ms:.3f} ms  p99 {res.p99_ms:.3f} ms"
                         f"  (connect {res.connect_ms:.0f} ms)" + cpu_shown(res)
                         if isinstance(res, Result) else f"{res[0]}: {res[1]}")
                log(f"[{n}/{total}] {w.key:15} c={c:<4} round {r + 1} {p.name:15} {shown}")
    return results, rss_under_load


def cpu_shown(res: Result) -> str:
    if res.cpu_us is None:
        return ""
    pooler, user, pg, bench = res.cpu_us
    return (f"  cpu/txn: pooler {pooler:.1f} us ({user:.1f} user), postgres {pg:.1f},"
            f" pgbench {bench:.1f}")


def cpu_table(a, results, w: Workload, names: list[str]) -> list[str]:
    """Medians over the rounds of each path's CPU per transaction, for one workload."""
    out = ["CPU per transaction (µs, median over rounds; logins included): pooler (its "
           "user-space part), PostgreSQL (all three servers), pgbench (with its -l log).", ""]
    head = ["clients"] + [f"{n} {col}" for n in names
                          for col in ("pooler (user)", "PostgreSQL", "pgbench", "sum")]
    out += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c in a.clients:
        cells = [str(c)]
        for n in names:
            runs = [r for r in results.get((w.key, c, n), [])
                    if isinstance(r, Result) and r.cpu_us]
            if not runs:
                cells += ["—"] * 4
                continue
            pooler, user, pg, bench = (statistics.median(r.cpu_us[i] for r in runs)
                                       for i in range(4))
            cells += [f"{pooler:.1f} ({user:.1f})" if pooler else "—", f"{pg:.1f}",
                      f"{bench:.1f}", f"{pooler + pg + bench:.1f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def paths_for(a, clients: int) -> list[Path]:
    return [p for p in a.paths if p.kind not in UNPOOLED or clients <= DIRECT_MAX_CLIENTS]


def measure_idle(a, poolers: Poolers) -> list[tuple[str, int, int] | tuple[str, str]]:
    """(path, RSS before, RSS with a.idle_clients idle clients), or (path, error); each
    pooler freshly started so the allocator has not been grown by the benchmark."""
    rows = []
    for p in a.paths:
        if p.kind in UNPOOLED:
            continue
        ep, proc = poolers.start(p, a.large_pool_size, f"{p.name}-memory")
        try:
            before, after = asyncio.run(_idle_rss(a, ep))
        except (idle.LoginError, OSError, asyncio.IncompleteReadError) as e:
            # Keep the benchmark results: a pooler refusing clients is itself a finding.
            rows.append((p.name, f"n/a ({e!r:.200})"))
            log(f"memory {p.name}: {rows[-1][1]}")
            continue
        finally:
            poolers.stop(proc)
        rows.append((p.name, before, after))
        log(f"memory {p.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB with "
            f"{a.idle_clients} idle clients")
    return rows


async def _idle_rss(a, ep) -> tuple[int, int]:
    args = ("127.0.0.1", ep.port)
    creds = (APP_USER, APP_PASSWORD, APP_DB)
    # One client first: the first login allocates one-off state (pools, caches).
    warm = await idle.open_idle(*args, 1, *creds)
    await asyncio.sleep(1)
    before = rss_bytes(ep.pid)
    clients = await idle.open_idle(*args, a.idle_clients, *creds)
    await asyncio.sleep(2)
    after = rss_bytes(ep.pid)
    idle.close_all(clients + warm)
    return before, after


def report(a, results, rss_under_load, memory, versions) -> str:
    out = ["# pgbench: direct PostgreSQL vs PgBouncer vs pgwarden", "",
           f"{versions}; -T {a.duration} s x {a.rounds} round(s), median per cell; "
           f"-j min(clients, {a.threads}); pgbench scale {a.scale}; pool size {a.pool_size} "
           f"(clients < {LARGE_CLIENTS}) / {a.large_pool_size} (>= {LARGE_CLIENTS}); "
           f"{os.cpu_count()} CPUs shared by PostgreSQL x3, the poolers and pgbench.", "",
           "pgwarden splits reads: -S and hot-set go to the two replicas (pool per node); "
           "'direct' and PgBouncer use the primary only. p99 is computed from pgbench's "
           "per-transaction log; -T includes the clients' logins (TPS does not).", "",
           "pgbench reaches every path over loopback TCP; the poolers reach PostgreSQL over "
           + ("each node's Unix socket (--server-socket unix)." if a.server_socket == "unix"
              else "loopback TCP."), ""]
    if any(p.kind == "forward" for p in a.paths):
        hops = ("a loopback TCP hop and a Unix-socket hop" if a.server_socket == "unix"
                else "two more loopback TCP hops")
        out += ["tcp-forward copies bytes between each client and a primary connection of "
                "its own and does nothing else (examples/tcp_forward.rs, one thread): what "
                f"{hops} cost on this machine, the least a proxy pays "
                "that relays each message once on its own server connection.",
                ""]
    names = [p.name for p in a.paths]
    ratios = [(x, y) for x, y in RATIOS if x in names and y in names]
    notes = []
    for w in a.workloads:
        out += [f"## {w.title}", ""]
        head = ["clients", "pool"] + [f"{n} {col}" for n in names
                                       for col in ("TPS", "avg ms", "p99 ms")]
        head += [f"{x}/{y} TPS" for x, y in ratios]
        out += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for c in a.clients:
            cells, tps = [str(c), str(pool_size_for(a, c))], {}
            for n in names:
                runs = results.get((w.key, c, n))
                if runs is None:
                    cells += ["—"] * 3
                elif all(isinstance(r, Result) for r in runs):
                    med = [statistics.median(getattr(r, f) for r in runs)
                           for f in ("tps", "avg_ms", "p99_ms")]
                    tps[n] = med[0]
                    cells += [f"{med[0]:.0f}", f"{med[1]:.3f}", f"{med[2]:.3f}"]
                else:
                    bad = next(r for r in runs if not isinstance(r, Result))
                    cells += [bad[0], "", ""]
                    notes.append(f"{w.key}, {c} clients, {n}: {bad[1]}")
            cells += [f"{tps[x] / tps[y]:.2f}" if x in tps and y in tps and tps[y] else "—"
                      for x, y in ratios]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if a.cpu:
            out += cpu_table(a, results, w, names)
    if notes:
        out += ["Failures (first error of the run):", ""] + [f"- {n}" for n in notes] + [""]
    if not memory and not rss_under_load:
        return "\n".join(out)
    # With --idle-clients 0 only the peak under load was measured.
    memory = memory or [(name, "not measured") for name in rss_under_load]
    out += ["## Memory (VmRSS)", "",
            f"| path | RSS idle | RSS with {a.idle_clients} idle clients | bytes per idle client"
            f" | peak RSS under {RSS_LOAD_CLIENTS}-client load |", "|---|---:|---:|---:|---:|"]
    for name, *m in memory:
        load = rss_under_load.get(name)
        load = f"{load / 2**20:.1f} MiB" if load else "—"
        if len(m) == 1:
            out.append(f"| {name} | {m[0]} | | | {load} |")
            continue
        before, after = m
        out.append(f"| {name} | {before / 2**20:.1f} MiB | {after / 2**20:.1f} MiB | "
                   f"{(after - before) / a.idle_clients:.0f} | {load} |")
    out += ["", "Idle clients completed a SCRAM login and stay connected; each pooler was "
            "started fresh for this measurement (pool size "
            f"{a.large_pool_size}). PgBouncer is a single process; pgwarden's figure is its "
            "whole process.", ""]
    return "\n".join(out)


def versions(a) -> str:
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    here = os.path.dirname(os.path.abspath(__file__))
    commit = first_line(["git", "-C", here, "describe", "--always", "--dirty"])
    return (f"pgwarden {commit}; {first_line([pgbench_bin(), '--version'])}; "
            f"{first_line(['pgbouncer', '--version'])}")


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def raise_fd_limit(needed: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        sys.exit(f"open-files limit {hard} < {needed} needed for --idle-clients; "
                 "raise it (ulimit -Hn) or pass a smaller --idle-clients")


def interrupt(*_):
    raise KeyboardInterrupt


def main():
    a = parse_args()
    # The idle-client script and the pooler each hold one descriptor per client.
    raise_fd_limit(a.idle_clients + 1000)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below tears everything down. SIGINT
    # too, explicitly: started from a non-interactive shell with '&' it is inherited ignored.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)
    workdir = tempfile.mkdtemp(prefix="pgwarden-pgbench-")
    os.chmod(workdir, 0o755)  # PgBouncer runs as postgres and reads its config from here
    children, ok = Children(), False
    try:
        log(f"starting the sandbox (logs in {workdir})")
        sandbox = Sandbox(children, a.pgwarden, workdir)
        log(f"primary :{sandbox.primary}, replicas {sandbox.replicas}; pgbench -i -s {a.scale}")
        init = subprocess.run([pgbench_bin(), "-i", "-q", "-s", str(a.scale),
                               *conn_args(sandbox.primary), APP_DB],
                              env=pgbench_env(), capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{init.stderr}")
        sandbox.wait_replicas_caught_up()
        poolers = Poolers(children, sandbox, a.pgwarden, a.forwarder, workdir,
                          max_clients=max(a.idle_clients, max(a.clients)) + 100,
                          server_socket=a.server_socket)
        results, rss_under_load = benchmark(a, poolers, workdir)
        poolers.stop_all()
        memory = measure_idle(a, poolers) if a.idle_clients > 0 else []
        text = report(a, results, rss_under_load, memory, versions(a))
        with open(a.out, "w") as f:
            f.write(text + "\n")
        print(text)
        log(f"report written to {a.out}")
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip teardown
        log("stopping poolers and the sandbox...")
        children.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
