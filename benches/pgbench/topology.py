"""The processes a benchmark run owns: the sandbox cluster, pgwarden and PgBouncer instances.

Every process is started in its own session, so a Ctrl-C in the terminal reaches only the
controller, which then stops them in reverse order (the sandbox last: it removes the
PostgreSQL data dirs on SIGTERM, which takes a few seconds).
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

APP_USER, APP_PASSWORD, APP_DB = "app", "app", "app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: str, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on {port} after {timeout}s:\n{tail(log)}")


def tail(path: str, lines=20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def merge(base: dict, override: dict) -> dict:
    """base with override's keys replaced, recursing into nested mappings."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Endpoint:
    """Where pgbench connects for one path, and which process to measure (None: direct)."""
    port: int
    pid: int | None


class Children:
    """Every process started by the run, stopped on exit whatever the reason."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen, float]] = []

    def start(self, name: str, argv: list[str], log: str, grace=10.0, **kw) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", out),
                                 stderr=out, start_new_session=True, **kw)
        self.procs.append((name, p, grace))
        return p

    def stop(self, p: subprocess.Popen):
        for i, (name, q, grace) in enumerate(self.procs):
            if q is p:
                del self.procs[i]
                _terminate(name, p, grace)
                return

    def stop_all(self):
        while self.procs:
            name, p, grace = self.procs.pop()
            _terminate(name, p, grace)


def _terminate(name: str, p: subprocess.Popen, grace: float):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {p.pid}) ignored SIGTERM for {grace}s; killing it", flush=True)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass


class Sandbox:
    """`pgwarden sandbox`: a primary and two streaming replicas (its own proxy is unused:
    every pooler here gets a config of ours, so pool sizes and limits are explicit)."""

    def __init__(self, children: Children, pgwarden: str, workdir: str):
        log = os.path.join(workdir, "sandbox.log")
        argv = [pgwarden, "sandbox", "--port", str(free_port()),
                "--admin-port", str(free_port()), "--pool-mode", "transaction"]
        # Generous grace: on SIGTERM it stops three PostgreSQL servers and removes them.
        self.proc = children.start("sandbox", argv, log, grace=90.0, stdout=subprocess.PIPE)
        self.ports = self._read_ports(log)
        self.primary = self.ports["primary"]
        self.replicas = [v for k, v in self.ports.items() if k.startswith("replica")]

    def _read_ports(self, log: str, timeout=180.0) -> dict[str, int]:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout],
                         daemon=True).start()
        ports, deadline = {}, time.monotonic() + timeout
        while "replica2" not in ports:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic())).decode()
            except queue.Empty:
                raise RuntimeError(f"sandbox not ready after {timeout}s:\n{tail(log)}")
            name, _, url = line.strip().partition(" ")
            if url.strip().startswith("postgres://"):
                ports[name] = int(url.strip().rsplit(":", 1)[1].split("/")[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.proc.returncode}:\n{tail(log)}")
        return ports

    def psql(self, port: int, sql: str) -> str:
        """Runs sql as the superuser (trusted over TCP from 127.0.0.1 in the sandbox)."""
        out = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p", str(port),
                              "-U", "postgres", "-d", APP_DB, "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def socket_dir(self) -> str:
        """The directory holding every node's Unix socket (the nodes share it)."""
        return self.psql(self.primary, "SHOW unix_socket_directories").split(",")[0].strip()

    def postmasters(self) -> list[int]:
        """The pid of each server's postmaster (first line of its postmaster.pid)."""
        pids = []
        for port in [self.primary, *self.replicas]:
            datadir = self.psql(port, "SHOW data_directory")
            with open(os.path.join(datadir, "postmaster.pid")) as f:
                pids.append(int(f.readline()))
        return pids

    def wait_replicas_caught_up(self, timeout=120.0):
        lsn = self.psql(self.primary, "SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        for port in self.replicas:
            while self.psql(port, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") != "t":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on {port} did not replay {lsn} in {timeout}s")
                time.sleep(0.2)


class Poolers:
    """pgwarden, PgBouncer and forwarder instances, one per (path, pool size), started on
    first use."""

    def __init__(self, children: Children, sandbox: Sandbox, pgwarden: str, forwarder: str,
                 workdir: str, max_clients: int, server_socket: str = "tcp"):
        self.children, self.sandbox, self.pgwarden = children, sandbox, pgwarden
        # "unix": every pooler reaches PostgreSQL through its Unix socket, as one on the
        # database's host would; "tcp": over loopback TCP, as one on another host would.
        self.socket_dir = sandbox.socket_dir() if server_socket == "unix" else None
        self.forwarder = forwarder
        self.workdir, self.max_clients = workdir, max_clients
        self.running: dict[tuple[str, int], tuple[Endpoint, subprocess.Popen]] = {}

    def endpoint(self, path, pool_size: int) -> Endpoint:
        if path.kind == "direct":
            return Endpoint(self.sandbox.primary, None)
        key = (path.name, pool_size)
        if key not in self.running:
            self.running[key] = self.start(path, pool_size, f"{path.name}-pool{pool_size}")
        return self.running[key][0]

    def start(self, path, pool_size: int, tag: str) -> tuple[Endpoint, subprocess.Popen]:
        port, log = free_port(), os.path.join(self.workdir, f"{tag}.log")
        if path.kind == "pgwarden":
            config = self._pgwarden_config(path, pool_size, port, tag)
            argv = [path.binary or self.pgwarden, "run", "--config", config]
            proc = self.children.start(tag, argv, log)
        elif path.kind == "pgbouncer":
            argv = ["pgbouncer", self._pgbouncer_config(pool_size, port, tag)]
            # PgBouncer refuses to run as root. Popen(user=) rather than runuser keeps the
            # raised open-files limit (PAM may reset it) and gives us pgbouncer's own pid.
            as_pg = {"user": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
            proc = self.children.start(tag, argv, log, **as_pg)
        elif path.kind == "forward":
            target = (f"{self.socket_dir}/.s.PGSQL.{self.sandbox.primary}" if self.socket_dir
                      else f"127.0.0.1:{self.sandbox.primary}")
            argv = [self.forwarder, str(port), target]
            proc = self.children.start(tag, argv, log)
        else:
            raise ValueError(f"unknown path kind {path.kind!r}")
        wait_for_port(port, proc, tag, log)
        return Endpoint(port, proc.pid), proc

    def stop(self, proc: subprocess.Popen):
        self.children.stop(proc)

    def stop_all(self):
        for _, proc in self.running.values():
            self.children.stop(proc)
        self.running.clear()

    def _pgwarden_config(self, path, pool_size: int, port: int, tag: str) -> str:
        sb, host = self.sandbox, self.socket_dir or "127.0.0.1"
        nodes = [{"name": "primary", "host": host, "port": sb.primary, "role": "primary"}]
        nodes += [{"name": f"replica{i}", "host": host, "port": p, "role": "replica"}
                  for i, p in enumerate(sb.replicas, 1)]
        config = {
            "listen": f"127.0.0.1:{port}",
            "limits": {"max_client_connections": self.max_clients},
            "pool": {"mode": "transaction", "size": pool_size},
            "server_tls": "disable",
            "routing": {"read_write_split": True},
            "users": [{"name": APP_USER, "password": APP_PASSWORD}],
            "nodes": nodes,
        }
        f = os.path.join(self.workdir, f"{tag}.yaml")
        with open(f, "w") as out:
            # JSON is valid YAML, and needs no YAML library.
            json.dump(merge(config, path.pgwarden), out, indent=2)
        return f

    def _pgbouncer_config(self, pool_size: int, port: int, tag: str) -> str:
        d = os.path.join(self.workdir, tag)
        os.makedirs(d, exist_ok=True)
        users = os.path.join(d, "userlist.txt")
        # The server's own SCRAM secret, as in a production userlist (or auth_query): PgBouncer
        # then checks clients without a PBKDF2 per login, and logs in to the server by SCRAM
        # pass-through. With a plain-text password it derives a new salted key per client,
        # which makes 512 clients take seconds to connect.
        secret = self.sandbox.psql(
            self.sandbox.primary, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_USER}'")
        with open(users, "w") as out:
            out.write(f'"{APP_USER}" "{secret}"\n')
        ini = os.path.join(d, "pgbouncer.ini")
        with open(ini, "w") as out:
            out.write(f"""[databases]
{APP_DB} = host={self.socket_dir or "127.0.0.1"} port={self.sandbox.primary} dbname={APP_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {self.max_clients}
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
""")
        if os.geteuid() == 0:
            shutil.chown(d, "postgres")
            for f in (users, ini):
                shutil.chown(f, "postgres")
        return ini
