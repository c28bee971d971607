"""`rankshard cluster up`: real processes from embedded defaults, a clean stop, data that survives."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from cli._local import _alive, _descendants, free_port
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


_readers: dict[int, threading.Thread] = {}


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 90.0) -> str:
    """The first output line containing `needle` (read by a thread: a buffered pipe defeats select)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    _readers[proc.pid] = reader
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} within {timeout}s; output: {''.join(seen)}")


def _up(data_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "--data-dir", str(data_dir), "cluster", "up", "--port", str(port),
         "--nodes", "2", "--shards", "3", "--boundaries", "100,200"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RANKSHARD_PG_FAST": "1"},
    )


def _stop(proc: subprocess.Popen[str]) -> set[int]:
    children = set(_descendants(proc.pid))
    assert children, "cluster up started no processes"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    reader = _readers.pop(proc.pid, None)
    if reader is not None:
        reader.join(10)
    assert proc.stdout is not None
    proc.stdout.close()
    return {pid for pid in children if _alive(pid)}


def test_up_serves_stops_cleanly_and_restarts_with_the_same_data(tmp_path: Path) -> None:
    port = free_port()
    proc = _up(tmp_path, port)
    try:
        assert _wait_line(proc, "router listening on").strip() == f"rankshard: router listening on 127.0.0.1:{port}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            lb = pb_grpc.LeaderboardStub(channel)
            for user, score in [("ann", 50), ("ben", 150), ("cat", 250), ("ann", 100)]:
                lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="global", user_id=user, score=score), timeout=10)
            before = lb.GetTop(pb.GetTopRequest(leaderboard="global"), timeout=10)
        assert [(e.user_id, e.score) for e in before.entries] == [("cat", 250), ("ann", 150), ("ben", 150)]
    finally:
        left = _stop(proc)
    assert left == set(), f"processes left behind after SIGTERM: {left}"

    proc = _up(tmp_path, port)
    try:
        _wait_line(proc, "router listening on")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            after = pb_grpc.LeaderboardStub(channel).GetTop(pb.GetTopRequest(leaderboard="global"), timeout=10)
        assert after == before
    finally:
        assert _stop(proc) == set()
