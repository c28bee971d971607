"""The router at its edges: a control plane that is down, and what introspection tools ask of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _processes import RouterProcess
from _router import bootstrap
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

from rankshard.cli._local import LocalPostgres, free_port
from rankshard.router import REFLECTION_V1
from rankshard.v1 import admin_pb2, admin_pb2_grpc, leaderboard_pb2, leaderboard_pb2_grpc


@pytest.fixture
def lone_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL of the test's own, free to be stopped."""
    with LocalPostgres(tmp_path / "pg", free_port(), fast=True) as server:
        yield server


@pytest.fixture
def router_over_lone_postgres(lone_postgres: LocalPostgres, node_addresses: list[str]) -> Iterator[RouterProcess]:
    asyncio.run(bootstrap(lone_postgres.dsn, node_addresses))
    router = RouterProcess(lone_postgres.dsn).start()
    try:
        yield router
    finally:
        router.stop()


def _admin_calls(channel: grpc.Channel) -> dict[str, object]:
    admin = admin_pb2_grpc.AdminStub(channel)
    return {
        "CreateLeaderboard": lambda t: admin.CreateLeaderboard(admin_pb2.LeaderboardConfig(name="late"), timeout=t),
        "GetLeaderboard": lambda t: admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="nowhere"), timeout=t),
        "ListLeaderboards": lambda t: admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), timeout=t),
        "GetShardMap": lambda t: admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard="nowhere"), timeout=t),
    }


def test_with_the_control_plane_down_admin_calls_fail_within_their_deadline_naming_it(
    lone_postgres: LocalPostgres, router_over_lone_postgres: RouterProcess
) -> None:
    with grpc.insecure_channel(router_over_lone_postgres.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        admin.CreateLeaderboard(admin_pb2.LeaderboardConfig(name="before"), timeout=10)
        lb = leaderboard_pb2_grpc.LeaderboardStub(channel)
        lb.UpdateScore(leaderboard_pb2.UpdateScoreRequest(leaderboard="before", user_id="u", score=3), timeout=5)
        lone_postgres.stop()
        for name, call in _admin_calls(channel).items():
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                call(2.0)
            took = time.monotonic() - started
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (name, caught.value.details())
            assert "control plane" in caught.value.details(), name
            assert took < 2.0, (name, took)
        # The data path goes on from the cached map.
        reply = lb.UpdateScore(
            leaderboard_pb2.UpdateScoreRequest(leaderboard="before", user_id="u", score=4), timeout=5
        )
        assert (reply.score, reply.rank) == (7, 1)
    router_over_lone_postgres.stop()
    log = "".join(router_over_lone_postgres.output)
    assert "never retrieved" not in log, log


def _reflect(
    channel: grpc.Channel, service: str, request: v1alpha.ServerReflectionRequest
) -> v1alpha.ServerReflectionResponse:
    """One request on `service`'s reflection stream. v1 and v1alpha messages are the same on the wire."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=v1alpha.ServerReflectionRequest.SerializeToString,
        response_deserializer=v1alpha.ServerReflectionResponse.FromString,
    )
    return next(iter(call(iter([request]), timeout=5)))


@pytest.mark.parametrize("service", [REFLECTION_V1, "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_is_served_as_v1_and_v1alpha(router, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        listed = _reflect(channel, service, v1alpha.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"rankshard.v1.Leaderboard", "rankshard.v1.Admin", "grpc.health.v1.Health", REFLECTION_V1} <= names
        found = _reflect(channel, service, v1alpha.ServerReflectionRequest(file_containing_symbol="rankshard.v1.Admin"))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        admin = next(f for f in files if f.package == "rankshard.v1" and any(s.name == "Admin" for s in f.service))
        assert "CreateLeaderboard" in {m.name for s in admin.service for m in s.method}
        own = _reflect(channel, service, v1alpha.ServerReflectionRequest(file_containing_symbol=REFLECTION_V1))
        assert own.file_descriptor_response.file_descriptor_proto, own
