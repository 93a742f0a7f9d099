"""Where the CPUs idled during a `perf sched record`: per CPU, the share of the time it was
idle, the share it was idle while another CPU was running one task and had another
runnable one waiting behind it (work the idle CPU could have taken, had the kernel moved
it), what ran there, and how often tasks moved between CPUs.

    perf sched record -o /tmp/sched.data -- sleep 1     # during the load
    python3 benches/pgbench/placement.py /tmp/sched.data
"""

import collections
import re
import subprocess
import sys

EVENT = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)")
FIELD = re.compile(r"(\w+)=(\S+)")


def analyse(lines):
    running = {}  # cpu -> pid (0: idle)
    cpu_of = {}  # pid -> the CPU it last ran on or was moved to
    comm = {}
    waiting = set()  # runnable, not running
    ran = collections.defaultdict(collections.Counter)  # cpu -> comm -> seconds
    idle = collections.Counter()
    idle_beside_waiter = collections.Counter()
    migrations = 0
    first = last = None
    for line in lines:
        m = EVENT.match(line)
        if not m:
            continue
        cpu, t, name, rest = int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        running.setdefault(cpu, 0)
        if first is None:
            first = t
        if last is not None:
            dt = t - last
            # CPUs running a task with another queued behind it.
            crowded = {cpu_of[p] for p in waiting if running.get(cpu_of.get(p), 0) != 0}
            for c, pid in running.items():
                if pid == 0:
                    idle[c] += dt
                    if crowded - {c}:
                        idle_beside_waiter[c] += dt
                else:
                    ran[c][comm.get(pid, "?")] += dt
        last = t
        if name == "sched:sched_switch":
            before, after = rest.split("==>")
            prev, nxt = dict(FIELD.findall(before)), dict(FIELD.findall(after))
            p, n = int(prev["prev_pid"]), int(nxt["next_pid"])
            comm[p], comm[n] = prev["prev_comm"], nxt["next_comm"]
            if p != 0 and prev["prev_state"].startswith("R"):
                waiting.add(p)  # preempted
            waiting.discard(n)
            cpu_of[p] = cpu_of[n] = cpu
            running[cpu] = n
        elif name == "sched:sched_waking":
            f = dict(FIELD.findall(rest))
            p = int(f["pid"])
            comm[p] = f["comm"]
            if p not in running.values():
                waiting.add(p)
                cpu_of.setdefault(p, int(f["target_cpu"]))
        elif name == "sched:sched_migrate_task":
            f = dict(FIELD.findall(rest))
            cpu_of[int(f["pid"])] = int(f["dest_cpu"])
            migrations += 1
    return (last - first if first is not None else 0.0), idle, idle_beside_waiter, ran, migrations


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: placement.py PERF_SCHED_DATA")
    script = subprocess.run(
        ["perf", "script", "-i", sys.argv[1], "-F", "cpu,time,event,trace"],
        capture_output=True, text=True, check=True)
    span, idle, beside, ran, migrations = analyse(script.stdout.splitlines())
    if span <= 0:
        sys.exit("no scheduler events in the recording")
    print(f"{span:.2f} s recorded; {migrations / span:.0f} task moves between CPUs per second")
    print("| CPU | idle | idle while another CPU had a task waiting | what ran there |")
    print("|---:|---:|---:|---|")
    for c in sorted(ran.keys() | idle.keys()):
        top = ", ".join(f"{k} {v / span:.0%}" for k, v in ran[c].most_common(4))
        print(f"| {c} | {idle[c] / span:.1%} | {beside[c] / span:.1%} | {top} |")


if __name__ == "__main__":
    main()
