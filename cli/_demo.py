"""``rankshard demo``: a local cluster in a temporary folder, simulated game traffic, the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import grpc

from rankshard.v1 import admin_pb2, admin_pb2_grpc
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._channel import RouterAccess
from ._cluster import DEFAULT_BOARD, LocalCluster
from ._demo_reshard import split_and_move
from ._local import free_port
from ._options import settings_of

PLAYERS = 2000
GAMES = 20000
BATCH = 50


@click.command()
@click.option("--games", default=GAMES, show_default=True, type=click.IntRange(100, 1_000_000))
@click.option("--players", default=PLAYERS, show_default=True, type=click.IntRange(10, 1_000_000))
@click.option("--seed", default=7, show_default=True, help="random seed of the simulation")
@click.pass_context
def demo(ctx: click.Context, games: int, players: int, seed: int) -> None:
    """Start a local cluster in a temporary folder, play simulated games through the router with a
    live view, split the biggest shard and move half of it to the other node while the games go on,
    show the top 10, one player's rank and neighbours, check every rank, and stop everything.

    \b
    Examples:
      rankshard demo
      rankshard demo --games 100000 --players 5000
    """
    started = time.monotonic()
    # A throwaway cluster: no need for PostgreSQL to sync what the folder's removal drops anyway.
    settings = dataclasses.replace(settings_of(ctx), pg_fast=True)
    with tempfile.TemporaryDirectory(prefix="rankshard-demo-") as tmp:
        click.echo("rankshard demo: starting PostgreSQL, 2 Valkey nodes and a router ...")
        with LocalCluster(Path(tmp), nodes=2, shards=4, routers=1, port=free_port(), settings=settings) as local:
            click.echo(f"rankshard: router listening on {local.address}")
            access = RouterAccess.of(dataclasses.replace(settings, data_dir=local.data_dir), local.address)
            summary = asyncio.run(_play(access, local.control_plane, games, players, random.Random(seed)))
        click.echo("rankshard demo: cluster stopped, temporary folder removed")
    click.echo(f"{summary}\nwall time {time.monotonic() - started:.1f}s")


async def _play(access: RouterAccess, control_plane: str, games: int, players: int, rng: random.Random) -> str:
    async with access.channel() as channel:
        board = pb_grpc.LeaderboardStub(channel)
        admin = admin_pb2_grpc.AdminStub(channel)
        # Skill decides how much a win is worth: most players earn little, a few earn a lot.
        skill = {f"player-{i:05d}": rng.paretovariate(2.5) for i in range(players)}
        names = list(skill)
        expected: dict[str, int] = {}
        latencies: list[float] = []
        done = 0
        view = _LiveView(games)
        reshard: asyncio.Task[list[str]] | None = None
        while done < games:
            size = min(BATCH, games - done)
            updates = []
            for j in range(size):
                user = rng.choice(names)
                points = int(rng.expovariate(1 / 60) * skill[user]) + 1
                updates.append(pb.ScoreUpdate(user_id=user, score=points, request_id=f"game-{done + j}"))
                expected[user] = expected.get(user, 0) + points
            t0 = time.perf_counter()
            await _send(board, updates)
            latencies.append(time.perf_counter() - t0)
            done += size
            if reshard is None and done >= games // 3:
                view.note("rankshard demo: splitting the biggest shard and moving half of it, games going on ...")
                reshard = asyncio.create_task(split_and_move(control_plane, DEFAULT_BOARD, view.note))
            if view.due() or done == games:
                top = await board.GetTop(pb.GetTopRequest(leaderboard=DEFAULT_BOARD, limit=3), timeout=5)
                view.show(done, top)
        jobs = await reshard if reshard is not None else []
        view.close()
        for line in jobs:
            click.echo(line)
        checked = await _check_ranks(board, expected)
        top = await board.GetTop(pb.GetTopRequest(leaderboard=DEFAULT_BOARD, limit=10), timeout=5)
        _table("Top 10", top.entries)
        someone = rng.choice(names)
        rank = await board.GetRank(pb.GetRankRequest(leaderboard=DEFAULT_BOARD, user_id=someone), timeout=5)
        click.echo(
            f"\n{someone}: score {rank.entry.score}, rank {rank.entry.rank} of {rank.total} "
            f"(better than {rank.percentile:.1f}% of players)"
        )
        around = await board.GetAround(
            pb.GetAroundRequest(leaderboard=DEFAULT_BOARD, user_id=someone, radius=3), timeout=5
        )
        _table(f"Around {someone}", around.entries, mark=someone)
        shard_map = await admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard=DEFAULT_BOARD), timeout=5)
        click.echo("\nShards of 'global' (score ranges, members):")
        for s in shard_map.shards:
            lower = s.lower if s.HasField("lower") else "-inf"
            upper = s.upper if s.HasField("upper") else "+inf"
            click.echo(f"  {s.id:4} [{lower}, {upper})  on {s.node}  {s.members} members")
        ms = sorted(x * 1000 for x in latencies)
        return (
            f"\nEvery rank checked after the split and the move: {checked} players' scores and ranks equal one"
            " sorted list's"
            f"\nSummary: {games} game results from {len(set(n for n in names))} simulated players in "
            f"{len(latencies)} batches of up to {BATCH}; {rank.total} players ranked; batch latency "
            f"p50 {statistics.median(ms):.1f} ms, p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f} ms"
        )


async def _send(board: pb_grpc.LeaderboardStub, updates: list[pb.ScoreUpdate]) -> None:
    """One batch, sent again with the same request ids if the router could not answer (none is applied twice)."""
    request = pb.BatchUpdateScoresRequest(leaderboard=DEFAULT_BOARD, updates=updates)
    for attempt in range(5):
        try:
            await board.BatchUpdateScores(request, timeout=10)
            return
        except grpc.aio.AioRpcError as exc:
            if attempt == 4 or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise


async def _check_ranks(board: pb_grpc.LeaderboardStub, expected: dict[str, int]) -> int:
    """Every player's score and rank as served, page by page, against one sorted list of what was sent; raises
    `click.ClickException` on the first difference. Returns how many players were checked."""
    model = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    served: list[pb.Entry] = []
    while len(served) < len(model):
        page = await board.GetTop(
            pb.GetTopRequest(leaderboard=DEFAULT_BOARD, limit=1000, offset=len(served)), timeout=10
        )
        if not page.entries:
            break
        served.extend(page.entries)
    rank = 0
    for i, (user, score) in enumerate(model):
        if i == 0 or score != model[i - 1][1]:
            rank = i + 1
        got = served[i] if i < len(served) else None
        if got is None or (got.user_id, got.score, got.rank) != (user, score, rank):
            shown = "nothing" if got is None else f"{got.user_id} {got.score} rank {got.rank}"
            raise click.ClickException(f"position {i}: expected {user} {score} rank {rank}, served {shown}")
    return len(model)


class _LiveView:
    """A progress line redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= (0.25 if self.tty else 2.0)

    def show(self, done: int, top: pb.GetTopResponse) -> None:
        self.last = time.monotonic()
        rate = done / max(self.last - self.started, 1e-6)
        leaders = "  ".join(f"#{e.rank} {e.user_id} {e.score}" for e in top.entries)
        line = f"games {done}/{self.total}  {rate:,.0f}/s  players {top.total}  leaders: {leaders}"
        if self.tty:
            click.echo("\r\033[K" + line, nl=False)
        else:
            click.echo(line)

    def note(self, line: str) -> None:
        """A line of its own above the progress line."""
        click.echo(("\r\033[K" if self.tty else "") + line)

    def close(self) -> None:
        if self.tty:
            click.echo()


def _table(title: str, entries: list[pb.Entry], mark: str | None = None) -> None:
    click.echo(f"\n{title}:")
    for e in entries:
        pointer = "  <-" if e.user_id == mark else ""
        click.echo(f"  {e.rank:>5}  {e.user_id:<14} {e.score:>8}{pointer}")
