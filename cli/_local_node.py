"""``nodes add --local``: another node for the local cluster running in the data dir.

The port is recorded in `cluster.json` (its `node_ports`); the running `cluster up` notices the file change
within one supervision round, starts the node in ``nodes/nodeN/`` and supervises it with the rest
(`LocalCluster.joined`). Once it answers, it is registered here as `nodes add` registers any node. A later
`cluster up` starts it again with the others.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import click
import redis

from rankshard.shard_map import ControlPlane, Node

from ._claims import cluster_running
from ._local import free_port
from ._settings import SETTINGS_FILE, LocalSettings

START_TIMEOUT = 30.0
"""Seconds the running cluster may take to notice the new port and start the node."""
_POLL_SECONDS = 0.05


def record_local_node(data_dir: Path) -> tuple[LocalSettings, int]:
    """A new node port recorded in `data_dir`'s `cluster.json`; raises `click.ClickException` (changing nothing)
    when no cluster runs there."""
    if not cluster_running(data_dir):
        raise click.ClickException(
            f"no cluster is running in {data_dir}: start one with `rankshard --data-dir {data_dir} cluster up`,"
            " then add nodes to it"
        )
    # Two `nodes add --local` at once would each save the ports they read: one would lose the other's.
    with (data_dir / (SETTINGS_FILE + ".lock")).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = LocalSettings.load(data_dir)
        if recorded is None:
            raise click.ClickException(f"{data_dir / SETTINGS_FILE} is missing: is {data_dir} a cluster's data dir?")
        port = free_port()
        recorded.node_ports.append(port)
        recorded.save(data_dir)
    return recorded, port


def wait_node_serving(data_dir: Path, port: int, timeout: float = START_TIMEOUT) -> None:
    """Until the node on `port` answers PING; raises `click.ClickException` when the cluster stops first or it
    does not answer within `timeout` (its port stays recorded: the next `cluster up` starts it)."""
    deadline = time.monotonic() + timeout
    while not _answers(port):
        if not cluster_running(data_dir):
            raise click.ClickException(f"the cluster in {data_dir} stopped before the node on port {port} started")
        if time.monotonic() >= deadline:
            raise click.ClickException(
                f"the node on port {port} did not start within {timeout:g} s; see {data_dir}/nodes/*/valkey.log"
            )
        time.sleep(_POLL_SECONDS)


def _answers(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        with client:
            return bool(client.ping())
    except redis.RedisError:  # not listening yet, or still loading
        return False


async def register_local_node(recorded: LocalSettings, port: int, control_plane_timeout: float) -> Node:
    """Registers the local node on `port` in the cluster's own control plane. Raises `RankshardError`."""
    async with await ControlPlane.open(recorded.control_plane, timeout=control_plane_timeout) as cp:
        return await cp.add_node(f"127.0.0.1:{port}")
