"""CPU time per transaction, split by who spent it (the pooler, PostgreSQL, pgbench), from
the kernel's per-process counters read around one pgbench run: on a machine where all of
them share the cores, it says where a TPS figure's time went.
"""

import os
import resource
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """Seconds of CPU, counted since boot (a snapshot) or over a run (a difference)."""
    pooler_user: float = 0.0
    pooler_sys: float = 0.0
    postgres: float = 0.0
    pgbench: float = 0.0

    def __sub__(self, o: "Cpu") -> "Cpu":
        return Cpu(self.pooler_user - o.pooler_user, self.pooler_sys - o.pooler_sys,
                   self.postgres - o.postgres, self.pgbench - o.pgbench)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


# Indexes into _stat's fields (proc(5) numbers them from 1, with pid and comm first).
PPID, UTIME, STIME, CUTIME, CSTIME = 1, 11, 12, 13, 14


def snapshot(pooler: int | None, postmasters: list[int]) -> Cpu:
    """Counters now. PostgreSQL's share is every postmaster and its live children, plus
    what its exited children used (the postmaster's cutime/cstime), so a run's backends
    are counted whether they are still there at the end or not."""
    cpu = Cpu()
    if pooler:
        s = _stat(pooler)
        if s:
            cpu.pooler_user = int(s[UTIME]) / TICK
            cpu.pooler_sys = int(s[STIME]) / TICK
    masters = set(postmasters)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        s = _stat(pid)
        if s is None or (pid not in masters and int(s[PPID]) not in masters):
            continue
        ticks = int(s[UTIME]) + int(s[STIME])
        if pid in masters:
            ticks += int(s[CUTIME]) + int(s[CSTIME])
        cpu.postgres += ticks / TICK
    # pgbench has exited and been waited for by the end of a run: its time is here.
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu.pgbench = ru.ru_utime + ru.ru_stime
    return cpu


def per_transaction(used: Cpu, transactions: int) -> tuple[float, float, float, float]:
    """(pooler, of which user, PostgreSQL, pgbench) in microseconds per transaction."""
    us = 1e6 / max(transactions, 1)
    return ((used.pooler_user + used.pooler_sys) * us, used.pooler_user * us,
            used.postgres * us, used.pgbench * us)
