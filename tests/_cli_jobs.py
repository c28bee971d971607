"""What the tests of the jobs CLI share: a router whose sweeper never runs, the CLI in-process, board `carve` seeded
(under a writer), its map and job rows as a value to compare before and after, the board against its model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from _fixtures_cluster import serve
from _router import Client
from click.testing import CliRunner, Result
from test_carve import BOARD, USERS, Writer

from rankshard.cli import main
from rankshard.shard_map import ControlPlane, Job, Shard
from rankshard.v1 import leaderboard_pb2 as pb


def quiet_client(dsn: str, addresses: list[str]) -> Iterator[Client]:
    """A client of a router whose sweeper never runs: it would finish abandoned jobs itself, racing the command
    under test for them."""
    yield from serve(dsn, addresses, sweep_interval=3600.0)


def seeded_writer(client: Client, seed_of: int) -> Iterator[Writer]:
    """Board `carve` (cut at 100) seeded, a writer (`seed_of` its random seed) incrementing it until the caller
    ends; handed over once 30 of its writes are acknowledged (so the test runs under traffic)."""
    writer = Writer(client, seed=seed_of)
    writer.expected = seed(client, [100])
    writer.start()
    writer.wait_for(30)
    yield writer
    writer.stop()


def cli(dsn: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--control-plane", dsn, *args], env=env)


def seed(client: Client, boundaries: list[int]) -> dict[str, int]:
    """Board `carve` with USERS at scores 0..299; returns the scores as a model."""
    client.create(BOARD, boundaries=boundaries)
    for i, user in enumerate(USERS):
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=BOARD, user_id=user, score=i), timeout=10)
    return {u: i for i, u in enumerate(USERS)}


def board_equals_model(client: Client, expected: dict[str, int]) -> None:
    """GetTop lists every member at its expected score, in order; sampled GetRanks agree."""
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=10)
    assert [(e.user_id, e.score) for e in top.entries] == sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
    for e in top.entries[::29]:
        rank = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=e.user_id), timeout=10)
        assert rank.entry.rank == 1 + sum(1 for s in expected.values() if s > e.score)


def checked_clean(dsn: str) -> None:
    result = cli(dsn, "check", "-l", BOARD)
    assert result.exit_code == 0, result.output


def snapshot(dsn: str) -> tuple[int, tuple[Shard, ...], list[Job]]:
    """The board's map (epoch, every shard's range, node, state, generation) and every job row."""

    async def read() -> tuple[int, tuple[Shard, ...], list[Job]]:
        async with await ControlPlane.open(dsn) as cp:
            shard_map = await cp.shard_map(BOARD)
            return shard_map.epoch, tuple(shard_map.shards), await cp.jobs.list()

    return asyncio.run(read())


def shard_at(dsn: str, score: int) -> Shard:
    """The shard holding `score`."""
    return next(s for s in snapshot(dsn)[1] if s.holds(score))


def other_node(node: str) -> str:
    return "n2" if node == "n1" else "n1"
