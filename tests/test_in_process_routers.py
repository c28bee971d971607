"""Routers served inside a process without gRPC (what `rankshard bench` drives the nodes with when a machine's gRPC
tier cannot load them enough): they answer as a router process does, refusals included, each with connections of
its own."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from _router import Client

from rankshard.router import in_process_routers
from rankshard.v1 import leaderboard_pb2 as pb


def test_routers_in_process_answer_as_the_router_does_and_refuse_with_its_status(
    client: Client, control_plane_dsn: str
) -> None:
    client.create("inproc", boundaries=[10, 20])

    async def calls() -> tuple[list[pb.UpdateScoreResponse], pb.GetRankResponse, grpc.StatusCode, str, set[int]]:
        async with in_process_routers(control_plane_dsn, 2) as (one, two):
            first = await one.UpdateScore(pb.UpdateScoreRequest(leaderboard="inproc", user_id="a", score=15))
            second = await two.UpdateScore(pb.UpdateScoreRequest(leaderboard="inproc", user_id="b", score=5))
            rank = await two.GetRank(pb.GetRankRequest(leaderboard="inproc", user_id="b"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await one.UpdateScore(pb.UpdateScoreRequest(leaderboard="inproc", user_id="", score=1))
            clusters = {id(stub._service.cluster) for stub in (one, two)}  # type: ignore[attr-defined]
            return [first, second], rank, refused.value.code(), refused.value.details() or "", clusters

    (first, second), rank, code, details, clusters = asyncio.run(calls())
    assert (first.score, first.rank, second.score, second.rank) == (15, 1, 5, 2)
    assert (rank.entry.rank, rank.total) == (2, 2)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "user_id" in details
    assert len(clusters) == 2  # each router its own node connections, as separate processes have
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard="inproc", limit=10))  # the router process sees their writes
    assert [(e.user_id, e.score, e.rank) for e in top.entries] == [("a", 15, 1), ("b", 5, 2)]
