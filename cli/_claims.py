"""What a running local cluster holds so that no second one can share it: its data dir and its router port.

- The data dir: an exclusive `flock` on `DIR/cluster.lock`, which names the holder (pid, router address). The
  kernel drops the lock when the holder dies, however it dies, so a lock left by a SIGKILLed `cluster up` never
  blocks the next one; a second `cluster up` on the dir is refused before anything in it changes.
- The router port: first a bind without SO_REUSEPORT proves no other process serves it (gRPC routers elsewhere
  included, which set SO_REUSEPORT); then a socket bound with SO_REUSEPORT, never listening, holds it for as long
  as the cluster runs. The cluster's routers (`--reuse-port`) share the port with it and with each other, and a
  router that restarts finds the port still its cluster's, while everything else is refused it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

LOCK_FILE = "cluster.lock"


class ClaimRefused(RuntimeError):
    """The data dir or the port belongs to something else already; the message says what, in one line."""


class DataDirLock:
    """Held while a cluster runs in `data_dir`; `acquire` raises `ClaimRefused` when another one does."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, router_address: str) -> None:
        """Takes the lock (creating the dir if need be) and records who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = _describe(lock.read())
            lock.close()
            raise ClaimRefused(f"a cluster is already running in {self.path.parent}{holder}") from None
        lock.truncate(0)
        lock.write(json.dumps({"pid": os.getpid(), "router": router_address}) + "\n")
        lock.flush()
        self._file = lock

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def cluster_running(data_dir: Path) -> bool:
    """Whether a cluster runs in `data_dir` (holds its lock). Asking takes a shared lock for an instant: a
    `cluster up` starting in that instant is refused as if one ran, and can simply be run again."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _describe(record: str) -> str:
    # The holder writes its record just after it takes the lock: a reader may come in between.
    try:
        holder = json.loads(record)
        return f" (pid {int(holder['pid'])}, router {holder['router']})"
    except (ValueError, KeyError, TypeError):
        return ""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket holding `host:port` for the cluster's routers; raises `ClaimRefused` when another process has it."""
    try:
        # SO_REUSEADDR so that closed connections lingering in TIME_WAIT do not count as a server.
        socket.create_server((host, port)).close()
        hold = socket.socket()
        try:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            hold.bind((host, port))
        except BaseException:
            hold.close()
            raise
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ClaimRefused(
                f"router port {host}:{port} is in use by another process; choose another --port"
            ) from None
        raise ClaimRefused(
            f"cannot listen on router port {host}:{port}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    return hold
