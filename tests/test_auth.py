"""Bearer tokens, roles and rate limits through a real router (docs/api.md, Auth): each refusal's status, that a
refused call changes nothing stored, and that health and reflection stay open to every caller."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _router import Client, RouterThread, bootstrap
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

from rankshard.cli import main
from rankshard.router import REFLECTION_V1, SecurityError
from rankshard.router._auth import parse_grants
from rankshard.router._security import Security
from rankshard.shard_map import Settings
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

ADMIN, GAME, LIMITED = "admin-token-1", "game-token-1", "game-token-limited"


class Clock:
    """The router's rate-limit clock, moved by the test: the bucket refills exactly when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guarded(control_plane_dsn: str, node_addresses: list[str], tmp_path: Path, clock: Clock) -> Iterator[int]:
    """The port of a router requiring tokens: admin, game, and a game token limited to 1 call/s, burst 2."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps({"admin": ADMIN, "game": [GAME, {"token": LIMITED, "rate": 1, "burst": 2}]}), encoding="utf-8"
    )
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    router = RouterThread(control_plane_dsn, clock=clock, tokens=tokens).start()
    admin = Client(router.port)
    admin.admin.CreateLeaderboard(admin_pb2.LeaderboardConfig(name="b"), metadata=_bearer(ADMIN), timeout=10)
    admin.close()
    yield router.port
    router.stop()


@pytest.fixture
def client(guarded: int) -> Iterator[Client]:
    c = Client(guarded)
    yield c
    c.close()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=10, **kwargs)  # type: ignore[operator]  # a stub's method
    return caught.value


def _update(user: str, score: int) -> pb.UpdateScoreRequest:
    return pb.UpdateScoreRequest(leaderboard="b", user_id=user, score=score)


def _top(client: Client) -> list[tuple[str, int]]:
    reply = client.lb.GetTop(pb.GetTopRequest(leaderboard="b", limit=10), metadata=_bearer(ADMIN), timeout=10)
    return [(e.user_id, e.score) for e in reply.entries]


@pytest.mark.parametrize(
    "metadata",
    [(), _bearer("not-a-token"), (("authorization", GAME),), (("authorization", f"Basic {GAME}"),), _bearer("")],
    ids=["no token", "unknown token", "no scheme", "another scheme", "empty token"],
)
def test_a_call_without_a_known_token_is_unauthenticated_and_changes_nothing(
    client: Client, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call, request in (
        (client.lb.UpdateScore, _update("ann", 5)),
        (client.admin.DeleteLeaderboard, admin_pb2.DeleteLeaderboardRequest(name="b")),
    ):
        refused = _refused(call, request, metadata=metadata)
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
    assert _top(client) == []
    listed = client.admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), metadata=_bearer(ADMIN), timeout=10)
    assert [b.name for b in listed.leaderboards] == ["b"]


def test_a_game_token_calls_leaderboard_and_is_denied_admin_changing_nothing(client: Client) -> None:
    client.lb.UpdateScore(_update("ann", 5), metadata=_bearer(GAME), timeout=10)
    rank = client.lb.GetRank(pb.GetRankRequest(leaderboard="b", user_id="ann"), metadata=_bearer(GAME), timeout=10)
    assert (rank.entry.score, rank.entry.rank) == (5, 1)

    delete = admin_pb2.DeleteLeaderboardRequest(name="b")
    refused = _refused(client.admin.DeleteLeaderboard, delete, metadata=_bearer(GAME))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
    created = _refused(client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="c"), metadata=_bearer(GAME))
    assert created.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = client.admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), metadata=_bearer(ADMIN), timeout=10)
    assert [b.name for b in listed.leaderboards] == ["b"]
    assert _top(client) == [("ann", 5)]


def test_an_admin_token_calls_both_services(client: Client) -> None:
    client.lb.UpdateScore(_update("ben", 7), metadata=_bearer(ADMIN), timeout=10)
    shard_map = client.admin.GetShardMap(
        admin_pb2.GetShardMapRequest(leaderboard="b"), metadata=(("authorization", f"bearer {ADMIN}"),), timeout=10
    )
    assert sum(s.members for s in shard_map.shards) == 1
    assert _top(client) == [("ben", 7)]


def test_health_and_reflection_need_no_token(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "rankshard.v1.Leaderboard", "rankshard.v1.Admin"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = client.channel.stream_stream(
        f"/{REFLECTION_V1}/ServerReflectionInfo",
        request_serializer=v1alpha.ServerReflectionRequest.SerializeToString,
        response_deserializer=v1alpha.ServerReflectionResponse.FromString,
    )
    listed = next(iter(reflect(iter([v1alpha.ServerReflectionRequest(list_services="")]), timeout=10)))
    assert {"rankshard.v1.Leaderboard", "rankshard.v1.Admin"} <= {s.name for s in listed.list_services_response.service}


def test_a_token_past_its_rate_is_exhausted_until_its_bucket_refills(client: Client, clock: Clock) -> None:
    limited = _bearer(LIMITED)
    client.lb.UpdateScore(_update("cat", 1), metadata=limited, timeout=10)
    client.lb.UpdateScore(_update("cat", 1), metadata=limited, timeout=10)  # the burst of 2
    refused = _refused(client.lb.UpdateScore, _update("cat", 1), metadata=limited)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
    assert _top(client) == [("cat", 2)], "the refused update was not applied"
    client.lb.UpdateScore(_update("dan", 1), metadata=_bearer(GAME), timeout=10)  # other tokens: their own limits

    clock.now += 0.5  # half a call's worth
    assert _refused(client.lb.UpdateScore, _update("cat", 1), metadata=limited).code() == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    clock.now += 0.5
    client.lb.UpdateScore(_update("cat", 1), metadata=limited, timeout=10)
    assert _top(client) == [("cat", 3), ("dan", 1)]
    clock.now += 3600  # a long pause refills only up to the burst
    for _ in range(2):
        client.lb.GetTop(pb.GetTopRequest(leaderboard="b"), metadata=limited, timeout=10)
    assert _refused(client.lb.GetTop, pb.GetTopRequest(leaderboard="b"), metadata=limited).code() == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_a_router_without_tokens_serves_every_caller(router: RouterThread) -> None:
    plain = Client(router.port)
    try:
        plain.create("open")
        plain.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="open", user_id="u", score=1), timeout=10)
    finally:
        plain.close()


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "must be a JSON object"),
        ({}, "must be a JSON object"),
        ({"root": "t"}, "unknown role 'root'"),
        ({"admin": ""}, "admin[0]: a token must be a non-empty string without spaces"),
        ({"admin": "a b"}, "admin[0]: a token must be a non-empty string without spaces"),
        ({"admin": "t", "game": ["t"]}, "game[0]: the same token is listed twice"),
        ({"game": [{"token": "t", "rate": 0}]}, "game[0]: rate must be a positive number"),
        ({"game": [{"token": "t", "rate": True}]}, "game[0]: rate must be a positive number"),
        ({"game": [{"token": "t", "rate": 5, "burst": 0}]}, "game[0]: burst must be a positive integer"),
        ({"game": [{"token": "t", "burst": 5}]}, "game[0]: a burst needs a rate"),
        ({"game": [{"token": "t", "limit": 5}]}, 'game[0]: must be a token or {"token"'),
    ],
)
def test_a_malformed_tokens_file_stops_the_router_with_one_line_naming_it(
    tmp_path: Path, document: object, problem: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(SecurityError) as caught:
        Security.of(Settings(tokens=path))
    assert str(caught.value).startswith(f"tokens file {path}: {problem}"), caught.value


def test_the_router_process_refuses_a_bad_tokens_file_before_it_serves(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "rankshard.router", "--control-plane", "postgresql://nowhere/x", "--tokens", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"rankshard router: tokens file {path}: {_json_error('{not json')}"]


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("valid JSON")


def test_a_rate_without_a_burst_allows_a_seconds_worth_at_once() -> None:
    grants = parse_grants({"game": [{"token": "t", "rate": 2.5}], "admin": ["a1", "a2"]})
    assert grants["t"].bucket is not None and grants["t"].bucket.burst == 3
    assert (grants["a1"].role, grants["a2"].role, grants["a1"].bucket) == ("admin", "admin", None)


def test_the_cli_sends_rankshard_token_to_the_router_it_names(client: Client, guarded: int, tmp_path: Path) -> None:
    client.lb.UpdateScore(_update("eve", 9), metadata=_bearer(GAME), timeout=10)
    top = ["--data-dir", str(tmp_path / "none"), "leaderboards", "top", "b", "--router", f"127.0.0.1:{guarded}"]
    shown = CliRunner().invoke(main, top, env={"RANKSHARD_TOKEN": GAME})
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines() == ["RANK  USER_ID  SCORE", "1     eve      9"]
    anonymous = CliRunner().invoke(main, top, env={"RANKSHARD_TOKEN": ""})
    assert anonymous.exit_code == 1
    assert anonymous.stderr.startswith(f"rankshard: 127.0.0.1:{guarded} answered UNAUTHENTICATED: no token")


def test_the_cli_without_a_router_to_ask_says_how_to_name_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "leaderboards", "top", "global"])
    assert result.exit_code == 1
    assert result.stderr.startswith("rankshard: no router: pass --router HOST:PORT, or start a local cluster")
