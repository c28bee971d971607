"""`rankshard check` / `repair` and the router's sweeper: damage is found, reported, and healed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from _router import Client, RouterThread, bootstrap
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.shard_node import MOVE_STEPS
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

BOUNDARIES = [10, 20, 30]


class InjectedCrash(Exception):
    pass


def _cli(dsn: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--control-plane", dsn, *args])
    return result.exit_code, result.output + (
        repr(result.exception) if result.exception and not isinstance(result.exception, SystemExit) else ""
    )


def _node(address: str) -> redis.Redis:
    host, port = address.split(":")
    return redis.Redis(host=host, port=int(port), decode_responses=True)


def _populate(client: Client, board: str = "b", users: int = 40) -> dict[str, int]:
    client.create(board, boundaries=BOUNDARIES)
    scores = {f"u{i:02d}": (i * 7) % 45 - 5 for i in range(users)}
    client.lb.BatchUpdateScores(
        pb.BatchUpdateScoresRequest(
            leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=s) for u, s in scores.items()]
        )
    )
    return scores


def _expected_top(scores: dict[str, int]) -> list[tuple[str, int, int]]:
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    return [(u, s, 1 + sum(1 for v in scores.values() if v > s)) for u, s in ordered]


def _top(client: Client, board: str = "b") -> list[tuple[str, int, int]]:
    return [
        (e.user_id, e.score, e.rank) for e in client.lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=1000)).entries
    ]


def _crash_once(router: RouterThread, step: str) -> None:
    def hook(at: str) -> None:
        if at == step:
            router.hook = None
            raise InjectedCrash(at)

    router.hook = hook


def test_a_sound_board_checks_clean_and_repair_does_nothing(control_plane_dsn: str, client: Client) -> None:
    scores = _populate(client)
    code, out = _cli(control_plane_dsn, "check")
    assert code == 0, out
    code, out = _cli(control_plane_dsn, "repair", "-l", "b")
    assert code == 0, out
    assert "moves finished 0, members rewritten 0, stray copies removed 0" in out
    assert _top(client) == _expected_top(scores)


@pytest.mark.parametrize("step", MOVE_STEPS[:-1])
def test_check_reports_an_abandoned_move_and_repair_finishes_it(
    control_plane_dsn: str, router: RouterThread, client: Client, step: str
) -> None:
    scores = _populate(client)
    _crash_once(router, step)
    with pytest.raises(grpc.RpcError):
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="b", user_id="u01", score=30, request_id="x"))
    scores["u01"] += 30
    code, out = _cli(control_plane_dsn, "check", "--json")
    assert code == 1
    kinds = {f["kind"] for f in json.loads(out)["b"]}
    assert "pending-move" in kinds
    code, out = _cli(control_plane_dsn, "repair")
    assert code == 0, out
    assert "moves finished 1" in out
    assert _cli(control_plane_dsn, "check")[0] == 0
    assert _top(client) == _expected_top(scores)
    code, out = _cli(control_plane_dsn, "repair")
    assert "moves finished 0, members rewritten 0" in out


@pytest.fixture
def fast_sweeping_router(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[RouterThread]:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    thread = RouterThread(control_plane_dsn, sweep_interval=0.05, sweep_age_ms=200).start()
    yield thread
    thread.stop()


@pytest.mark.parametrize("step", MOVE_STEPS[:-1])
def test_the_sweeper_heals_an_abandoned_move_without_another_write(
    control_plane_dsn: str, fast_sweeping_router: RouterThread, step: str
) -> None:
    client = Client(fast_sweeping_router.port)
    try:
        scores = _populate(client)
        _crash_once(fast_sweeping_router, step)
        with pytest.raises(grpc.RpcError):
            client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="b", user_id="u01", score=30))
        scores["u01"] += 30
        deadline = time.monotonic() + 20
        while _cli(control_plane_dsn, "check", "-l", "b")[0] != 0:
            assert time.monotonic() < deadline, "the sweeper did not heal the move"
        assert _top(client) == _expected_top(scores)
    finally:
        client.close()


def test_a_lost_shard_is_rebuilt_from_the_index(
    control_plane_dsn: str, client: Client, node_addresses: list[str]
) -> None:
    scores = _populate(client)
    lost = None
    for address in node_addresses:
        with _node(address) as r:
            keys = list(r.scan_iter("rs:[zvd]:b/s2"))
            if keys:
                lost = r.zcard("rs:z:b/s2")
                r.delete(*keys)
    assert lost, "shard s2 held no members to lose"
    code, out = _cli(control_plane_dsn, "check", "-l", "b", "--json")
    assert code == 1
    kinds = [f["kind"] for f in json.loads(out)["b"]]
    assert kinds.count("missing") == lost and "descriptor" in kinds
    code, out = _cli(control_plane_dsn, "repair", "-l", "b")
    assert code == 0, out
    assert f"descriptors restored 1, moves finished 0, members rewritten {lost}" in out
    assert _top(client) == _expected_top(scores)
    for user in scores:
        reply = client.lb.GetRank(pb.GetRankRequest(leaderboard="b", user_id=user))
        assert reply.entry.rank == 1 + sum(1 for v in scores.values() if v > scores[user])


def test_stray_copies_and_orphans_are_reported_and_removed(
    control_plane_dsn: str, client: Client, node_addresses: list[str]
) -> None:
    scores = _populate(client)
    shard_map = client.admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard="b"))
    s4 = next(s for s in shard_map.shards if s.id == "s4")
    # Nodes were registered in fixture order: n1 is the first address.
    with _node(node_addresses[int(s4.node[1:]) - 1]) as r:
        r.zadd("rs:z:b/s4", {"u03": -99, "ghost": -98})
    code, out = _cli(control_plane_dsn, "check", "-l", "b", "--json")
    assert code == 1
    found = {(f["kind"], f["user"]) for f in json.loads(out)["b"]}
    assert {("wrong-shard", "u03"), ("orphan", "ghost")} <= found
    code, out = _cli(control_plane_dsn, "repair", "-l", "b")
    assert code == 0, out
    assert "stray copies removed 2" in out
    assert _top(client) == _expected_top(scores)
