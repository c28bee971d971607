"""``rankshard leaderboards top``: a board's leaders, asked of a router as a game backend asks (GetTop)."""

from __future__ import annotations

import asyncio

import click
import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._channel import RouterAccess
from ._manage import emit
from ._options import settings_of

TIMEOUT = 10.0


@click.command("top")
@click.argument("name")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000), help="entries to show")
@click.option("--router", "address", metavar="HOST:PORT", help="the router to ask [the local cluster's]")
@click.option("--json", "as_json", is_flag=True, help="a JSON array of {rank, user_id, score}")
@click.pass_context
def top(ctx: click.Context, name: str, limit: int, address: str | None, as_json: bool) -> None:
    """The first entries of leaderboard NAME, through a router's GetTop.

    The router is the local cluster's in --data-dir unless --router names one. Its calls
    carry RANKSHARD_TOKEN (or --token), else the local cluster's admin token when it
    runs with `cluster up --auth`; they use TLS, trusting its CA, with `cluster up --tls`.

    \b
    Examples:
      rankshard leaderboards top global
      rankshard leaderboards top global --limit 3 --json
      RANKSHARD_TOKEN=... rankshard leaderboards top global --router 127.0.0.1:50051
    """
    access = RouterAccess.of(settings_of(ctx), address)
    try:
        reply = asyncio.run(_get_top(access, name, limit))
    except grpc.RpcError as exc:
        raise click.ClickException(f"{access.address} answered {exc.code().name}: {exc.details()}") from None
    rows = [{"rank": e.rank, "user_id": e.user_id, "score": e.score} for e in reply.entries]
    emit(rows, as_json, ["rank", "user_id", "score"])


async def _get_top(access: RouterAccess, name: str, limit: int) -> pb.GetTopResponse:
    async with access.channel() as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        return await stub.GetTop(pb.GetTopRequest(leaderboard=name, limit=limit), timeout=TIMEOUT)
