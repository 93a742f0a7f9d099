"""The proxy's user-space cost per transaction, counted by callgrind: instructions and
heap allocations per pgbench transaction (-S in each protocol mode, and an autocommit
UPDATE), for one build or two.

Counts, not times: they barely move from run to run on a busy shared machine, where TPS
moves by 10%. The sandbox runs under valgrind (its PostgreSQL children do not), pgbench
warms every connection and statement first, then the counters are zeroed, a fixed number
of transactions run, and the counters are dumped and read.
"""

import argparse
import collections
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from topology import APP_DB, APP_PASSWORD, APP_USER, free_port

# pgbench arguments per mode. "update" is one autocommit write: the pooled path to the
# primary, plus the commit-position capture; "simple-update" is -N, a five-statement
# read-write transaction.
UPDATE_SCRIPT = ("\\set aid random(1, 100000)\n\\set delta random(-5000, 5000)\n"
                 "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n")
MODES = {
    "simple": ["-S", "-M", "simple"],
    "extended": ["-S", "-M", "extended"],
    "prepared": ["-S", "-M", "prepared"],
    "update": ["-f", "{update}"],
    "simple-update": ["-N"],
}
# Key derivation for SCRAM logins to the servers (PBKDF2 over SHA-256).
SCRAM = ("sha2::", "pbkdf2::", "hmac::")


def parse_dump(path: str) -> tuple[int, collections.Counter, int]:
    """Total instructions, instructions by function (self cost), calls to malloc."""
    by_fn: collections.Counter = collections.Counter()
    fn = cfn = None
    call_line = False
    mallocs = 0
    calls = 0
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                call_line = True
                calls = int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                if call_line:
                    # The cost line after calls= is the callee's inclusive cost.
                    call_line = False
                    if cfn == "malloc":
                        mallocs += calls
                    continue
                by_fn[fn] += int(parts[1])
    return sum(by_fn.values()), by_fn, mallocs


def short(name: str) -> str:
    for _ in range(3):
        name = re.sub(r"<[^<>]*>", "", name)
    return name.replace("{{closure}}", "").replace("::::", "::")[:90]


def pgbench(port: int, mode: str, clients: int, txns: int, work: str):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD)
    script = os.path.join(work, "update.sql")
    with open(script, "w") as out:
        out.write(UPDATE_SCRIPT)
    args = [a.format(update=script) for a in MODES[mode]]
    subprocess.run(
        ["pgbench", "-n", *args, "-c", str(clients), "-j", str(min(clients, 2)),
         "-t", str(txns), "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, APP_DB],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def measure(binary: str, clients: int, txns: int, top: int, modes: list[str],
            keep: bool) -> dict:
    work = tempfile.mkdtemp(prefix="pgwarden-callgrind-")
    port, admin = free_port(), free_port()
    log = os.path.join(work, "sandbox.log")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--trace-children=no", "--compress-strings=no",
         "--compress-pos=no", f"--callgrind-out-file={work}/cg.%p", binary, "sandbox",
         "--port", str(port), "--admin-port", str(admin)],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        primary = None
        while primary is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox under valgrind did not start:\n{open(log).read()}")
            m = re.search(r"^primary .*:(\d+)/", open(log).read(), re.M)
            primary = int(m.group(1)) if m else None
            time.sleep(0.5)
        env = dict(os.environ, PGPASSWORD=APP_PASSWORD)
        subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(primary),
                        "-U", APP_USER, APP_DB], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = {}
        for mode in modes:
            pgbench(port, mode, clients, txns, work)  # pools, lanes and statements warm up
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            pgbench(port, mode, clients, txns, work)
            before = set(glob.glob(f"{work}/cg.*.*"))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            dump = None
            while dump is None:
                new = set(glob.glob(f"{work}/cg.*.*")) - before
                dump = max(new, key=os.path.getmtime) if new else None
                time.sleep(0.2)
            time.sleep(0.5)  # the dump file is written in one go, but not atomically
            total, by_fn, mallocs = parse_dump(dump)
            # A server connection opened in the window (valgrind's slowness can make a
            # pool grow) costs a SCRAM key derivation, tens of millions of instructions
            # that say nothing about the hot path: counted apart.
            scram = sum(c for f, c in by_fn.items() if f.startswith(SCRAM))
            n = clients * txns
            out[mode] = ((total - scram) / n, mallocs / n, scram / n,
                         [(short(f), c / n) for f, c in by_fn.most_common(top)
                          if not f.startswith(SCRAM)])
        return out
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if keep:
            print(f"callgrind dumps kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pgwarden", required=True, help="release pgwarden binary")
    ap.add_argument("--baseline", help="another pgwarden binary to count beside it")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--transactions", type=int, default=500, help="per client")
    ap.add_argument("--top", type=int, default=8, help="functions listed per mode")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma-separated, from: " + ", ".join(MODES))
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind dumps (for callgrind_annotate)")
    a = ap.parse_args()
    modes = a.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        ap.error(f"unknown modes: {', '.join(unknown)}")
    builds = [("pgwarden", a.pgwarden)] + ([("baseline", a.baseline)] if a.baseline else [])
    results = {}
    for name, binary in builds:
        print(f"counting {name} ({binary}) under callgrind...", file=sys.stderr)
        results[name] = measure(binary, a.clients, a.transactions, a.top, modes, a.keep)
    print(f"\nUser-space instructions and malloc calls per pgbench transaction in the "
          f"proxy, {a.clients} clients x {a.transactions} transactions (callgrind), without "
          f"SCRAM key derivation for server connections opened meanwhile (per transaction: "
          + ", ".join(f"{n} {m} {results[n][m][2]:,.0f}" for n, _ in builds for m in modes)
          + ").\n")
    head = "| mode | " + " | ".join(f"{n} instructions | {n} mallocs" for n, _ in builds)
    head += " | pgwarden/baseline |" if a.baseline else " |"
    print(head)
    print("|---" * (1 + 2 * len(builds) + (1 if a.baseline else 0)) + "|")
    for mode in modes:
        cells = [f"{results[n][mode][0]:,.0f} | {results[n][mode][1]:.1f}" for n, _ in builds]
        ratio = (f" | {results['pgwarden'][mode][0] / results['baseline'][mode][0]:.2f}"
                 if a.baseline else "")
        print(f"| {mode} | " + " | ".join(cells) + ratio + " |")
    for mode in modes:
        print(f"\nTop functions (self instructions per transaction), pgwarden, {mode}:\n")
        for f, c in results["pgwarden"][mode][3]:
            print(f"- {c:,.0f} `{f}`")


if __name__ == "__main__":
    main()
