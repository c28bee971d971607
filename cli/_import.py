"""`rankshard leaderboards import`: members new to a board, in bulk, from `user_id,score` lines."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO

import click

from rankshard.shard_map import ControlPlane, RankshardError, ShardFrozen, StaleMap, check_score, check_user_id
from rankshard.shard_node import BoardLayout, ImportInterrupted, connect_cluster, import_members, sweep_board

from ._manage import _name, run

CHUNK = 1000
IN_FLIGHT = 4
"""Chunks under way at once: enough to keep both the importer and the nodes busy."""
ATTEMPTS = 20
"""Tries per chunk while shards move or are frozen for a migration step (about 10 s of waiting)."""


def read_members(stream: IO[str], source: str) -> list[tuple[str, int]]:
    """Every line of `stream` as (user id, score), checked in full before anything is written.

    A line is ``user_id,score`` (the last comma splits: user ids may hold commas); blank lines are
    skipped. Raises `click.ClickException` naming the first bad line.
    """
    members: list[tuple[str, int]] = []
    line_of: dict[str, int] = {}
    for n, line in enumerate(stream, 1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        user, comma, text = line.rpartition(",")
        try:
            if not comma:
                raise ValueError("is not user_id,score")
            try:
                score = int(text)
            except ValueError:
                raise ValueError(f"score: {text!r} is not an integer") from None
            check_user_id(user)
            check_score(score)
        except (ValueError, RankshardError) as exc:
            raise click.ClickException(f"{source} line {n}: {exc}; nothing was imported") from None
        if user in line_of:
            raise click.ClickException(
                f"{source} line {n}: user_id {user!r} is also on line {line_of[user]}; nothing was imported"
            )
        line_of[user] = n
        members.append((user, score))
    return members


@click.command("import")
@click.argument("name")
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.pass_context
def import_cmd(ctx: click.Context, name: str, source: IO[str]) -> None:
    """Add members to leaderboard NAME from SOURCE (a file, or - for stdin): one `user_id,score` per line.

    The input is read and checked in full first; then each member not on the board yet is added at its
    score, as its first UpdateScore would add it (members already there, or removed, are left as they
    are: an interrupted import can be run again). Safe while the board takes traffic.

    \b
    Examples:
      rankshard leaderboards import weekly players.csv
      generate-players | rankshard leaderboards import weekly -
    """
    board = _name(name)
    members = read_members(source, "stdin" if source is sys.stdin or source.name == "<stdin>" else source.name)

    async def work(cp: ControlPlane) -> tuple[int, float]:
        layout = BoardLayout(await cp.get_board(board), await cp.shard_map(board))
        cluster = await connect_cluster(cp)
        started, added, stale, done = time.monotonic(), 0, False, 0
        queue = list(range(0, len(members), CHUNK))[::-1]  # popped from the end: in input order
        last_report = started

        async def worker() -> None:
            nonlocal layout, added, stale, done, last_report
            while queue:
                at = queue.pop()
                chunk = members[at : at + CHUNK]
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        n = await import_members(cluster, layout, chunk)
                        break
                    except StaleMap as exc:  # a shard moved under the import: the chunk again, on the new map
                        # Members this attempt added are skipped by the next one: count them here.
                        added += exc.added if isinstance(exc, ImportInterrupted) else 0
                        stale = True
                        layout = BoardLayout(await cp.get_board(board), await cp.shard_map(board))
                    except ShardFrozen:  # a migration step holds the shard for a moment
                        await asyncio.sleep(0.05 * attempt)
                else:
                    raise ShardFrozen(
                        "?",
                        f"the shards of {board!r} kept changing under the import; run it again "
                        "(members already imported are left as they are)",
                    )
                added, done = added + n, done + len(chunk)  # after the await: other workers count too
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    click.echo(f"rankshard: {done:,} of {len(members):,} members sent", err=True)

        try:
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            if stale:  # entries whose shard write met the old map: finish them now, not at the next sweep
                await sweep_board(cluster, layout, min_age_ms=0, limit=100_000)
        finally:
            await cluster.aclose()
        return added, time.monotonic() - started

    added, seconds = run(ctx, work)
    rate = f" ({added / seconds:,.0f}/s)" if seconds > 0 and added else ""
    click.echo(
        f"imported {added:,} members into {board} in {seconds:.1f} s{rate}; "
        f"{len(members) - added:,} already on the board were left as they were"
    )
