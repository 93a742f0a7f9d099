"""Counts stale reads of the 10% write mix through one endpoint (pgbench cannot).

Sessions run the same mix as mix.sql (10% `UPDATE t_hot ... RETURNING v`, 45% reads of
t_hot, 45% of t_cold, ids 1..1000) for a few seconds, over raw protocol connections (the
login is idle.py's, so no Python PostgreSQL driver is needed, and the messages are those
pgbench sends in the same -M mode). Every UPDATE adds 1, so v only grows. A read of t_hot
id k is stale:

- for its session (read-your-writes) when it returns less than the v this session's own
  last UPDATE of k returned;
- for anyone (no read older than an acknowledged write) when it returns less than the
  highest v any session's UPDATE of k had returned before the read was sent.

One event loop runs every session, so "before the read was sent" is exact: an UPDATE's
reply is recorded before the next message goes out.
"""

import asyncio
import random
import struct
import time
from dataclasses import dataclass

import idle

UPDATE = "UPDATE t_hot SET v = v + 1 WHERE id = $1 RETURNING v"
HOT = "SELECT v FROM t_hot WHERE id = $1"
COLD = "SELECT v FROM t_cold WHERE id = $1"


@dataclass
class Counts:
    writes: int = 0
    hot_reads: int = 0
    cold_reads: int = 0
    stale_own: int = 0     # below the session's own last write of that id
    stale_any: int = 0     # below the highest write of that id acknowledged to anyone
    worst_behind: int = 0  # largest (acknowledged v - read v) among stale reads
    errors: int = 0
    first_error: str = ""

    @property
    def statements(self) -> int:
        """Statements that ran to completion (each one index scan of its table)."""
        return self.writes + self.hot_reads + self.cold_reads


class Conn:
    """One client connection sending the mix's three statements in a pgbench -M mode."""

    def __init__(self, reader, writer, protocol: str):
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.prepared: set[str] = set()
        self.parsing = ""  # a named statement whose Parse is not yet confirmed

    async def run(self, sql: str, key: int) -> tuple[int | None, str | None]:
        """(first column of the first row, None) or (None, error message)."""
        self.writer.write(self._request(sql, key))
        value, error = None, None
        while True:
            tag, body = await idle._read(self.reader)
            if tag == b"D" and value is None:
                (n,), length = struct.unpack("!h", body[:2]), struct.unpack("!i", body[2:6])[0]
                value = int(body[6:6 + length]) if n and length >= 0 else None
            elif tag == b"1":
                self.parsing = ""
            elif tag == b"E":
                error = idle._error_text(body)
            elif tag == b"Z":
                self.prepared.discard(self.parsing)  # a failed Parse left nothing behind
                self.parsing = ""
                return (None, error) if error else (value, None)

    def _request(self, sql: str, key: int) -> bytes:
        if self.protocol == "simple":
            return idle._msg(b"Q", sql.replace("$1", str(key)).encode() + b"\0")
        name = _name(sql) if self.protocol == "prepared" else ""
        out = b""
        if name not in self.prepared:
            out += idle._msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")
            if name:
                self.prepared.add(name)
                self.parsing = name
        param = str(key).encode()
        out += idle._msg(b"B", b"\0" + name.encode() + b"\0" + struct.pack("!hhi", 0, 1, len(param))
                         + param + struct.pack("!h", 0))
        out += idle._msg(b"D", b"P\0") + idle._msg(b"E", b"\0" + struct.pack("!i", 0))
        return out + idle._msg(b"S", b"")

    def close(self):
        self.writer.write(idle._msg(b"X", b""))
        self.writer.close()


def _name(sql: str) -> str:
    return {UPDATE: "mix_update", HOT: "mix_hot", COLD: "mix_cold"}[sql]


async def _session(conn: Conn, rng: random.Random, acked: dict[int, int], c: Counts,
                   deadline: float):
    mine: dict[int, int] = {}
    while time.monotonic() < deadline:
        key, r = rng.randint(1, 1000), rng.randint(1, 100)
        if r <= 10:
            v, err = await conn.run(UPDATE, key)
            if err is None:
                c.writes += 1
                mine[key] = max(mine.get(key, 0), v)
                acked[key] = max(acked.get(key, 0), v)
        elif r <= 55:
            # What the read must see, fixed before it is sent.
            own, anyone = mine.get(key, 0), acked.get(key, 0)
            v, err = await conn.run(HOT, key)
            if err is None:
                c.hot_reads += 1
                c.stale_own += v < own
                if v < anyone:
                    c.stale_any += 1
                    c.worst_behind = max(c.worst_behind, anyone - v)
        else:
            v, err = await conn.run(COLD, key)
            c.cold_reads += err is None
        if err is not None:
            c.errors += 1
            c.first_error = c.first_error or err


async def _check(port: int, sessions: int, seconds: float, protocol: str, user: str,
                 password: str, db: str, seed: int) -> Counts:
    conns = [Conn(*await idle.login("127.0.0.1", port, user, password, db), protocol)
             for _ in range(sessions)]
    counts, acked = Counts(), {}
    deadline = time.monotonic() + seconds
    try:
        await asyncio.gather(*(_session(c, random.Random(seed + i), acked, counts, deadline)
                               for i, c in enumerate(conns)))
    finally:
        for c in conns:
            c.close()
    return counts


def check(port: int, sessions: int, seconds: float, protocol: str, user: str, password: str,
          db: str, seed: int = 1) -> Counts:
    """Runs the mix through 127.0.0.1:port for `seconds` and returns what it counted."""
    return asyncio.run(_check(port, sessions, seconds, protocol, user, password, db, seed))
