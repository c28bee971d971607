"""The demo's online rebalancing step: the board's biggest shard split at its median, then the new half moved to the
other node, while the simulated games keep being played (docs/architecture.md, "Rebalancing")."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from rankshard.shard_map import ControlPlane, Job, JobStep
from rankshard.shard_node import Carver, connect_cluster, plan_move, plan_split, shard_sizes
from rankshard.shard_node._layout import BoardLayout

Echo = Callable[[str], None]


async def split_and_move(control_plane_dsn: str, board: str, echo: Echo) -> list[str]:
    """Splits `board`'s biggest shard and moves the new half to the node holding the fewest members; each job step
    is echoed as it begins. Returns one summary line per job."""
    owner = f"rankshard demo {socket.gethostname()} pid {os.getpid()}"
    async with await ControlPlane.open(control_plane_dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            layout = BoardLayout(await cp.get_board(board), await cp.shard_map(board))
            sizes = await shard_sizes(cluster, layout)
            biggest = max(layout.map.shards, key=lambda s: sizes[s.id])
            carver = Carver(cp, cluster, owner, on_step=_stepper(echo))
            split = await carver.run(await plan_split(cp, cluster, board, biggest.id, None, owner, 30))
            layout = BoardLayout(layout.config, await cp.shard_map(board))
            sizes = await shard_sizes(cluster, layout)
            per_node = {n: 0 for n in cluster.nodes}
            for s in layout.map.shards:
                per_node[s.node] += sizes[s.id]
            other = min((n for n in per_node if n != biggest.node), key=lambda n: per_node[n], default=biggest.node)
            moved = await carver.run(await plan_move(cp, board, split.target, other, owner, 30))
            return [_summary(split), _summary(moved)]
        finally:
            await cluster.aclose()


def _stepper(echo: Echo) -> Callable[[Job], None]:
    shown: set[tuple[int, JobStep]] = set()

    def on_step(job: Job) -> None:
        if (job.id, job.step) not in shown:
            shown.add((job.id, job.step))
            progress = f" {job.copied:,}/{job.total:,} copied" if job.step is JobStep.CATCHUP else ""
            echo(f"{job.describe()}: {job.step}{progress}")

    return on_step


def _summary(job: Job) -> str:
    return f"{job.describe()}: {job.state}, {job.copied:,} members copied, writes paused {job.freeze_ms or 0} ms"
