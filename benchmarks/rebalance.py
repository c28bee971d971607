"""What an online shard move costs, measured through the product's own commands: ``python -m
rankshard.benchmarks.rebalance [--members 1000000] [--rate 400] [--out DIR]``.

A local cluster of two nodes (``cluster up``) whose board ``global`` is one shard on n1 gets `--members` members
(``leaderboards import``). An open-loop writer sends UpdateScore calls with request ids at `--rate` per second the
whole time. Then, in one run:

1. **Before**: the writer alone, for `--seconds`: UpdateScore p50/p99, and node CPU per write on n1.
2. **MIGRATING, held**: ``shards move`` stopped right after the source became MIGRATING (the test-only
   ``RANKSHARD_JOB_CRASH_AT=FLOOR``, its claim held 1 s), so the shard notes every write for its catch-up with no
   copy running: node CPU per write on n1 again, for `--seconds`. The difference is the extra node work per write
   while MIGRATING.
3. **During the move**: ``jobs resume`` carries the move to its end: members moved per second (the job's copied
   members over its copy and catch-up time, from the times its step lines came), UpdateScore p50/p99 during it,
   the longest call a writer saw (the freeze), and the job's own freeze time.

Prints the figures and writes them as JSON to `--out` (default benchmarks/results/rebalance). A benchmark, not a
test: figures only, no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._procs import Cluster, free_port
from ._replies import info

BOARD = "global"


class Writer:
    """Open-loop UpdateScore calls (with request ids) at `rate` per second from a thread with its own event loop;
    each call's start time and latency are kept."""

    def __init__(self, address: str, rate: float, members: int) -> None:
        self.address, self.rate, self.members = address, rate, members
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def between(self, start: float, end: float) -> list[float]:
        return sorted(latency for t, latency in self.samples if start <= t < end)

    async def _run(self) -> None:
        rng = random.Random(1)
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.LeaderboardStub(channel)
            pending: set[asyncio.Task[None]] = set()
            n, t0 = 0, time.monotonic()
            while not self._stop.is_set():
                n += 1
                due = t0 + n / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                user = f"u{rng.randrange(self.members)}"
                request = pb.UpdateScoreRequest(
                    leaderboard=BOARD, user_id=user, score=rng.randint(1, 10), request_id=f"r{n}"
                )
                task = asyncio.create_task(self._call(stub, request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _call(self, stub: pb_grpc.LeaderboardStub, request: pb.UpdateScoreRequest) -> None:
        start = time.monotonic()
        for _ in range(20):
            try:
                await stub.UpdateScore(request, timeout=10)
                self.samples.append((start, time.monotonic() - start))
                return
            except grpc.aio.AioRpcError:
                self.errors += 1


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def rankshard(data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rankshard.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rankshard {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def node_cpu(cluster: Cluster, address: str) -> float:
    cpu = info(cluster.node(address), "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rankshard-rebalance-") as tmp:
        data_dir = Path(tmp) / "cluster"
        cluster = Cluster(data_dir, nodes=2, port=free_port())
        try:
            return _run(cluster, data_dir, Path(tmp), args)
        finally:
            cluster.stop()


def _run(cluster: Cluster, data_dir: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    members = tmp / "members.csv"
    rng = random.Random(7)
    members.write_text("".join(f"u{i},{int(rng.expovariate(1 / 1000))}\n" for i in range(args.members)))
    t = time.monotonic()
    rankshard(data_dir, "leaderboards", "import", BOARD, str(members))
    print(f"imported {args.members:,} members in {time.monotonic() - t:.1f} s", flush=True)
    source = cluster.nodes[0]
    writer = Writer(cluster.address, args.rate, args.members).start()
    try:
        time.sleep(2)  # the writer reaches its rate: the windows below are what is measured
        before = _window(cluster, writer, source, args.seconds)
        rankshard(
            data_dir,
            "shards",
            "move",
            "--leaderboard",
            BOARD,
            "--shard",
            "s1",
            "--to",
            "n2",
            env={"RANKSHARD_JOB_CRASH_AT": "FLOOR", "RANKSHARD_JOB_LEASE": "1"},
            check=False,
        )  # fmt: skip  (it dies by SIGKILL at FLOOR: its exit status is not looked at)
        job = _running_job(data_dir)
        migrating = _window(cluster, writer, source, args.seconds)
        start = time.monotonic()
        steps = _timed_steps(data_dir, job["id"])
        end = time.monotonic()
        time.sleep(1)
        done = json.loads(rankshard(data_dir, "jobs", "show", str(job["id"]), "--json"))
    finally:
        writer.stop()
    during = writer.between(start, end)
    copy_seconds = steps.get("FREEZE", end) - steps.get("COPY", start)
    return {
        "members": args.members,
        "rate": args.rate,
        "moved_per_second": done["copied"] / copy_seconds,
        "copy_seconds": copy_seconds,
        "to_commit_seconds": steps.get("COMMITTED", end) - start,
        "move_seconds": end - start,
        "copied": done["copied"],
        "job_freeze_ms": done["freeze_ms"],
        "before": before,
        "migrating": migrating,
        "during": {
            "calls": len(during),
            "p50_ms": 1000 * percentile(during, 0.5),
            "p99_ms": 1000 * percentile(during, 0.99),
            "longest_ms": 1000 * (during[-1] if during else float("nan")),
        },
        "writer_errors": writer.errors,
    }


def _timed_steps(data_dir: Path, job_id: int) -> dict[str, float]:
    """``jobs resume`` of the job, the time each step's first log line came (its output is one line per step when
    not a terminal: ``job 1 (...): COPY 12,000/100,000``)."""
    argv = [sys.executable, "-m", "rankshard.cli", "--data-dir", str(data_dir), "jobs", "resume", str(job_id)]
    seen: dict[str, float] = {}
    t0 = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as resume:
        assert resume.stdout is not None
        for line in resume.stdout:
            print(f"  {time.monotonic() - t0:6.1f}s {line.rstrip()}", flush=True)
            step = line.split("): ", 1)[-1].split(" ", 1)[0].strip(" ,\n")
            seen.setdefault(step, time.monotonic())
    if resume.returncode != 0:
        raise RuntimeError(f"rankshard jobs resume {job_id} failed ({resume.returncode})")
    return seen


def _window(cluster: Cluster, writer: Writer, node: str, seconds: float) -> dict[str, float]:
    start, cpu = time.monotonic(), node_cpu(cluster, node)
    time.sleep(seconds)
    end, used = time.monotonic(), node_cpu(cluster, node) - cpu
    calls = writer.between(start, end)
    return {
        "calls": len(calls),
        "p50_ms": 1000 * percentile(calls, 0.5),
        "p99_ms": 1000 * percentile(calls, 0.99),
        "source_node_us_per_write": 1e6 * used / max(1, len(calls)),
    }


def _running_job(data_dir: Path) -> dict[str, Any]:
    jobs = json.loads(rankshard(data_dir, "jobs", "list", "--json"))
    running = [j for j in jobs if j["state"] == "RUNNING"]
    if not running:
        raise RuntimeError(f"no running job after the interrupted move: {jobs}")
    return dict(running[0])


def report(result: dict[str, Any]) -> str:
    b, m, d = result["before"], result["migrating"], result["during"]
    extra = m["source_node_us_per_write"] - b["source_node_us_per_write"]
    return "\n".join(
        [
            f"move of a {result['members']:,}-member shard between nodes, writer at {result['rate']:.0f} UpdateScore/s",
            f"  members moved per second: {result['moved_per_second']:,.0f} (copy and catch-up of"
            f" {result['copied']:,} in {result['copy_seconds']:.1f} s;"
            f" committed after {result['to_commit_seconds']:.1f} s,"
            f" done with cleanup after {result['move_seconds']:.1f} s)",
            f"  UpdateScore p50/p99 before: {b['p50_ms']:.1f} / {b['p99_ms']:.1f} ms;"
            f" during the move: {d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms",
            f"  longest call a writer saw during the move: {d['longest_ms']:.0f} ms;"
            f" the job's freeze: {result['job_freeze_ms']} ms",
            f"  source node CPU per write: {b['source_node_us_per_write']:.0f} µs ACTIVE,"
            f" {m['source_node_us_per_write']:.0f} µs MIGRATING (+{extra:.0f} µs)",
            f"  writer errors (retried): {result['writer_errors']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    # 400/s: at 1,000/s one router on 2 cores is saturated before the move begins, and "before" is then the worse
    # of the two percentiles.
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rebalance"))
    args = parser.parse_args()
    result = measure(args)
    text = report(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "summary.txt").write_text(
        f"python -m rankshard.benchmarks.rebalance --members {args.members} --rate {args.rate:g} "
        f"--seconds {args.seconds:g}\n{text}\n"
    )


if __name__ == "__main__":
    main()
