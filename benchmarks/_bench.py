"""The test bench: the processes of one run (load generators, the echo floor, a cluster) and `measure`,
which runs one phase across the load-generator processes and accounts the servers' CPU time for it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc

from rankshard.v1 import admin_pb2 as apb
from rankshard.v1 import admin_pb2_grpc as apb_grpc

from ._hist import Histogram
from ._loadgen import RouterFactory, Share, merge, run_share, warm
from ._model import Profile
from ._procs import Cluster, Spawned, cpu_seconds, free_port
from ._storage import bare_phase

Progress = Callable[[str], None]
DirectDriver = Callable[..., dict[str, float]]
"""BatchUpdateScores' node operations driven directly, below the router: (control-plane DSN, board,
seconds, population, seed, model, batches in flight) -> {'updates_per_s', 'cpu_s', ...}. Picklable (it
runs in a load-generator process); the CLI supplies it, as only it may reach below the public surfaces."""
_START_MARGIN = 0.4
"""Seconds between handing a phase to the load generators and its start, so all start together."""


_STARTED = time.monotonic()


def print_progress(message: str) -> None:
    """One progress line on stderr, with the minutes and seconds since the run began."""
    minutes, seconds = divmod(int(time.monotonic() - _STARTED), 60)
    print(f"rankshard bench [{minutes}:{seconds:02d}]: {message}", file=sys.stderr, flush=True)


class Bench:
    """Every process of a run; use as a context manager (everything started is stopped on exit)."""

    def __init__(
        self,
        profile: Profile,
        workdir: Path,
        progress: Progress = print_progress,
        seed: int = 1,
        event_loop: str = "uvloop",
        direct: DirectDriver | None = None,
        routers: RouterFactory | None = None,
    ) -> None:
        self.profile = profile
        self.direct = direct
        self.routers = routers
        self.workdir = workdir
        self.progress = progress
        self.seed = seed
        self.event_loop = event_loop
        self.pool: ProcessPoolExecutor | None = None
        self.echo: Spawned | None = None
        self.cluster: Cluster | None = None
        self.single: Cluster | None = None
        """A cluster of one node, started by `one_node` for the plan's node figure."""

    def __enter__(self) -> Bench:
        try:
            self.progress(
                f"starting {self.profile.loaders} load generators, the echo server and a cluster "
                f"({self.profile.nodes} nodes)"
            )
            self.pool = ProcessPoolExecutor(self.profile.loaders, mp_context=get_context("spawn"))
            warmed = [self.pool.submit(warm) for _ in range(self.profile.loaders)]
            port = free_port()
            self.echo = Spawned(
                [sys.executable, "-m", "rankshard.benchmarks._echo", "--port", str(port), "--loop", self.event_loop],
                "echo listening",
                self.workdir / "echo.log",
            )
            self.echo_address = f"127.0.0.1:{port}"
            self.cluster = Cluster(self.workdir / "cluster", nodes=self.profile.nodes, port=free_port())
            for f in warmed:
                f.result()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.single is not None:
            self.single.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.echo is not None:
            self.echo.stop()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    @property
    def router_address(self) -> str:
        assert self.cluster is not None
        return self.cluster.address

    def one_node(self) -> Cluster:
        """A second local cluster, of one node (started on the first call, stopped with the bench): the node holding
        a whole board, index and shards, for a phase that keeps one node busier than the same load keeps two."""
        if self.single is None:
            self.progress("starting a cluster of one node")
            self.single = Cluster(self.workdir / "cluster-one-node", nodes=1, port=free_port())
        return self.single

    def create_board(self, name: str, boundaries: Sequence[int], members: int, cluster: Cluster | None = None) -> None:
        """A board laid out for `members` members, as a deployment would create it for its size (on `cluster`,
        default the bench's own)."""
        channel = grpc.insecure_channel(cluster.address if cluster is not None else self.router_address)
        try:
            apb_grpc.AdminStub(channel).CreateLeaderboard(
                apb.LeaderboardConfig(name=name, boundaries=list(boundaries), expected_members=members), timeout=30
            )
        finally:
            channel.close()

    def shard_map(self, board: str) -> apb.ShardMap:
        channel = grpc.insecure_channel(self.router_address)
        try:
            return apb_grpc.AdminStub(channel).GetShardMap(apb.GetShardMapRequest(leaderboard=board), timeout=60)
        finally:
            channel.close()

    def import_members(self, board: str, lines: Iterable[str], cluster: Cluster | None = None) -> float:
        """Loads `user_id,score` lines into `board` (of `cluster`, default the bench's own) with ``rankshard
        leaderboards import`` (the bulk path an SRE moving a leaderboard in would use); returns the seconds it
        took."""
        cluster = cluster or self.cluster
        assert cluster is not None
        argv = [
            sys.executable,
            "-m",
            "rankshard.cli",
            "--control-plane",
            cluster.control_plane,
            "leaderboards",
            "import",
            board,
            "-",
        ]
        t0 = time.perf_counter()
        with (self.workdir / "import.log").open("a") as log:
            # Its progress lines go to our stderr, next to the bench's own.
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, text=True, encoding="utf-8")
            assert proc.stdin is not None
            try:
                for line in lines:
                    proc.stdin.write(line)
                proc.stdin.close()
            finally:
                if proc.wait() != 0:
                    raise RuntimeError(
                        f"importing into {board!r} failed (see above, and {self.workdir / 'import.log'})"
                    )
        return time.perf_counter() - t0

    def run_in_pool(self, fn: Callable[..., Any], arg_sets: Sequence[tuple[Any, ...]]) -> list[Any]:
        assert self.pool is not None
        futures = [self.pool.submit(fn, *args) for args in arg_sets]
        return [f.result() for f in futures]

    def measure(
        self,
        name: str,
        target: str,
        board: str,
        mix: dict[str, float],
        *,
        rate: float = 0.0,
        seconds: float | None = None,
        concurrency: int | None = None,
        channels: int = 1,
        population: int = 1000,
        size_cache: float = 0.0,
        cluster: Cluster | None = None,
        **share: Any,
    ) -> dict[str, Any]:
        """Runs one phase: open loop at `rate` calls/s when given, else closed loop with `concurrency`
        calls in flight, from every load generator; `target` is 'echo', 'router', or 'inproc': `channels` routers
        served inside each load generator by `routers`, without gRPC (the router processes stand idle), on the nodes
        of `cluster` (default the bench's own). Returns the phase's figures, the target's CPU time included (none for
        'inproc'); `size_cache` (seconds) turns those routers' size cache on."""
        assert self.pool is not None and self.cluster is not None
        nodes = cluster or self.cluster
        assert target == "inproc" or nodes is self.cluster, "only routers in process serve another cluster"
        seconds = seconds or self.profile.phase_seconds
        loaders = self.profile.loaders
        concurrency = concurrency or self.profile.in_flight
        address = {"echo": self.echo_address, "inproc": nodes.control_plane}.get(target, self.router_address)
        if target == "inproc":
            assert self.routers is not None
            routers = partial(self.routers, size_cache=size_cache) if size_cache else self.routers
            share = {**share, "routers": routers}
        start_at = time.time() + _START_MARGIN
        shares = [
            Share(
                address=address,
                board=board,
                mix=mix,
                start_at=start_at,
                duration=seconds,
                rate=rate / loaders,
                concurrency=max(1, concurrency // loaders),
                channels=channels,
                population=population,
                seed=self.seed * 100 + i,
                model=self.profile.model,
                **share,
            )
            for i in range(loaders)
        ]
        futures: list[Future[dict[str, object]]] = [self.pool.submit(run_share, s) for s in shares]
        pids = self._pids(target)
        _sleep_until(start_at)
        cpu0, node0, reads0 = sum(map(cpu_seconds, pids)), nodes.node_cpu_by_node(), nodes.node_reads_by_node()
        self._countdown(name, start_at, seconds)
        cpu1, node1, reads1 = sum(map(cpu_seconds, pids)), nodes.node_cpu_by_node(), nodes.node_reads_by_node()
        merged = merge([f.result() for f in futures])
        by_node = [b - a for a, b in zip(node0, node1, strict=True)]
        reads_by_node = [b - a for a, b in zip(reads0, reads1, strict=True)]
        out = _figures(name, target, rate, seconds, merged, cpu1 - cpu0, sum(by_node), len(pids))
        reads = sum(reads_by_node) / out["items"] if out["items"] else 0.0
        return {
            **out,
            "concurrency": concurrency,
            "node_cpu_by_node": by_node,
            "node_reads_by_node": reads_by_node,
            "node_reads_per_item": reads,
        }

    def measure_direct(self, board: str, population: int) -> dict[str, Any] | None:
        """`direct` on `board` for a phase, in one load-generator process, with the nodes' CPU time for
        it; None when the bench was given no direct driver."""
        assert self.cluster is not None
        if self.direct is None:
            return None
        node0 = self.cluster.node_cpu_seconds()
        p = self.profile
        out = self.run_in_pool(
            self.direct,
            [(self.cluster.control_plane, board, p.phase_seconds, population, self.seed, p.model, p.batch_in_flight)],
        )[0]
        return {**out, "node_cpu_s": self.cluster.node_cpu_seconds() - node0}

    def measure_bare(self, kind: str, population: int, in_flight: int) -> dict[str, Any]:
        """`bare_phase` of `kind` for a phase on every node's bare sorted set, from one load-generator process,
        with node CPU per item and the nodes' busy share during it."""
        assert self.cluster is not None
        p = self.profile
        run = partial(bare_phase, radius=p.around_radius)
        out: dict[str, Any] = self.run_in_pool(
            run, [(self.cluster.nodes, kind, p.phase_seconds, population, in_flight)]
        )[0]
        out["node_us_per_item"] = 1e6 * out["node_cpu_s"] / out["items"] if out["items"] else 0.0
        return out

    def _pids(self, target: str) -> list[int]:
        assert self.echo is not None and self.cluster is not None
        if target == "inproc":
            return []
        return [self.echo.pid] if target == "echo" else self.cluster.router_pids()

    def _countdown(self, name: str, start_at: float, seconds: float) -> None:
        end = start_at + seconds
        tty = sys.stderr.isatty()
        while (left := end - time.time()) > 0:
            if tty:
                print(f"\r  {name}: {seconds - left:5.1f}/{seconds:.0f} s ", end="", file=sys.stderr, flush=True)
            time.sleep(min(0.5, left))
        if tty:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _figures(
    name: str,
    target: str,
    rate: float,
    seconds: float,
    merged: dict[str, Any],
    server_cpu: float,
    node_cpu: float,
    processes: int,
) -> dict[str, Any]:
    kinds = {}
    all_hist = Histogram()
    calls = items = 0
    for kind, k in merged["kinds"].items():
        all_hist.merge(k["hist"])
        calls += k["calls"]
        items += k["items"]
        kinds[kind] = {
            "calls": k["calls"],
            "items": k["items"],
            "calls_per_s": k["calls"] / seconds,
            "items_per_s": k["items"] / seconds,
            "latency": k["hist"].summary(),
            "hist": k["hist"].to_json(),
        }
    timeline = [
        {"t": t, "items_per_s": n, "p50_ms": h.percentile(50) / 1000, "p99_ms": h.percentile(99) / 1000}
        for t, (n, h) in sorted(merged["timeline"].items())
        if t < seconds
    ]
    return {
        "name": name,
        "target": target,
        "loop": "open" if rate else "closed",
        "offered_per_s": rate,
        "seconds": seconds,
        "calls": calls,
        "items": items,
        "calls_per_s": calls / seconds,
        "items_per_s": items / seconds,
        "latency": all_hist.summary(),
        "kinds": kinds,
        "errors": merged["errors"],
        "shed": merged["shed"],
        "server_processes": processes,
        "server_cpu_s": server_cpu,
        "node_cpu_s": node_cpu,
        "node_us_per_item": 1e6 * node_cpu / items if items else 0.0,
        "calls_per_server_core": calls / server_cpu if server_cpu else 0.0,
        "items_per_server_core": items / server_cpu if server_cpu else 0.0,
        "timeline": timeline,
    }
