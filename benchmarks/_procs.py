"""The processes a benchmark run starts, through their command lines only, and the CPU time they use.

A cluster is ``python -m rankshard.cli cluster up`` (the same command an SRE runs), extra routers are
``python -m rankshard.router``, the echo floor is ``python -m rankshard.benchmarks._echo``. Each dies with the benchmark
(Linux parent-death signal) and `stop()` ends it; CPU time comes from /proc (Linux).
"""

from __future__ import annotations

import ctypes
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from ._replies import info

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_us() -> None:
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A port on 127.0.0.1 free a moment ago, below Linux's ephemeral range (so no outgoing connection takes it)."""
    for _ in range(1000):
        port = random.randint(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 20000..32767")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class Spawned:
    """A child process that prints a line containing `ready` once it serves."""

    def __init__(
        self, argv: list[str], ready: str, log: Path, timeout: float = 90.0, env: dict[str, str] | None = None
    ) -> None:
        self.lines: list[str] = []
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            bufsize=0,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_us,
        )
        if not self._wait_for(ready, time.monotonic() + timeout):
            self.stop()
            raise RuntimeError(f"{' '.join(argv[:4])} did not start (see {log}): {self.lines[-3:]}")

    def _wait_for(self, ready: str, deadline: float) -> bool:
        # Raw reads, not readline: a buffered reader can hold the awaited line while select sees nothing.
        assert self.proc.stdout is not None
        fd, pending = self.proc.stdout.fileno(), b""
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                *lines, pending = (pending + chunk).split(b"\n")
                self.lines += [line.decode(errors="replace").strip() for line in lines]
                if any(ready in line for line in self.lines):
                    return True
            elif self.proc.poll() is not None:
                return False
        return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class Cluster:
    """A local cluster from ``rankshard cluster up`` in `data_dir`: its DSN, node addresses and routers."""

    def __init__(self, data_dir: Path, *, nodes: int, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.address = f"127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "rankshard.cli",
            "--data-dir",
            str(data_dir),
            "cluster",
            "up",
            "--nodes",
            str(nodes),
            "--shards",
            "1",
            "--routers",
            "1",
            "--port",
            str(port),
        ]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.up = Spawned(argv, "router listening on", data_dir / "cluster-up.log", env={"RANKSHARD_PG_FAST": "1"})
        self.control_plane = next(line.split()[-1] for line in self.up.lines if "control plane" in line)
        nodes_line = next(line for line in self.up.lines if line.startswith("rankshard: nodes"))
        self.nodes = nodes_line.split(" ", 2)[2].split(", ")
        self.extra: list[Spawned] = []
        self._clients: dict[str, redis.Redis] = {}

    def router_pids(self) -> list[int]:
        """The router processes serving the port: the one `cluster up` started, and extras."""
        first = [pid for pid in _children(self.up.pid) if b"router" in _cmdline(pid)]
        return first + [r.pid for r in self.extra]

    def scale_routers(self, count: int) -> None:
        """Starts or stops extra `python -m rankshard.router` processes on the same port until `count` serve it."""
        while 1 + len(self.extra) < count:
            argv = [
                sys.executable,
                "-m",
                "rankshard.router",
                "--control-plane",
                self.control_plane,
                "--port",
                str(self.port),
                "--reuse-port",
            ]
            log = self.data_dir / f"router-extra-{len(self.extra) + 1}.log"
            self.extra.append(Spawned(argv, "router listening on", log))
        while 1 + len(self.extra) > max(count, 1):
            self.extra.pop().stop()

    def node_cpu_seconds(self) -> float:
        """CPU time every node has used so far, as the nodes themselves report it (INFO cpu)."""
        return sum(self.node_cpu_by_node())

    def node_cpu_by_node(self) -> list[float]:
        """CPU time each node (in `nodes` order) has used so far: ``used_cpu_user + used_cpu_sys``."""
        out = []
        for address in self.nodes:
            cpu = info(self.node(address), "cpu")
            out.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
        return out

    def node_reads(self) -> int:
        """Read events every node has processed so far (``total_reads_processed``): about one per round trip a
        client's write woke it for."""
        return sum(self.node_reads_by_node())

    def node_reads_by_node(self) -> list[int]:
        """`node_reads` of each node, in `nodes` order."""
        return [int(info(self.node(a), "stats")["total_reads_processed"]) for a in self.nodes]

    def node_server(self) -> str:
        """What the nodes run, as the first one says: its engine and version, and its allocator (``jemalloc,
        preloaded`` when the launcher preloaded it into a server built with libc malloc, see cli/_binaries.py)."""
        server = info(self.node(self.nodes[0]), "server")
        engine = (
            f"Valkey {server['valkey_version']}" if "valkey_version" in server else f"Redis {server['redis_version']}"
        )
        allocator = str(info(self.node(self.nodes[0]), "memory")["mem_allocator"])
        maps = Path(f"/proc/{server['process_id']}/maps")
        if allocator == "libc" and maps.exists() and "libjemalloc" in maps.read_text():
            allocator = "jemalloc, preloaded"
        return f"{engine}, malloc {allocator}"

    def used_memory(self) -> int:
        return sum(int(info(self.node(a), "memory")["used_memory"]) for a in self.nodes)

    def rss(self) -> int:
        return sum(int(info(self.node(a), "memory")["used_memory_rss"]) for a in self.nodes)

    def node(self, address: str) -> redis.Redis:
        """A plain client of node `address`, for INFO and the storage baselines."""
        if address not in self._clients:
            host, _, port = address.rpartition(":")
            self._clients[address] = redis.Redis(host=host, port=int(port), socket_timeout=60)
        return self._clients[address]

    def stop(self) -> None:
        for r in self.extra:
            r.stop()
        self.extra.clear()
        for client in self._clients.values():
            client.close()
        self.up.stop()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
