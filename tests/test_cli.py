"""The `rankshard` command line, through click's CliRunner against real servers."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
import redis
from _router import Client
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb


def _run(dsn: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--control-plane", dsn, *args])
    return result.exit_code, result.output


def test_boards_shards_and_nodes(control_plane_dsn: str, client: Client, node_addresses: list[str]) -> None:
    code, out = _run(
        control_plane_dsn,
        "leaderboards",
        "create",
        "weekly",
        "--order",
        "asc",
        "--operator",
        "best",
        "--boundaries",
        "100,1000",
        "--expected-members",
        "2000000",
    )
    assert code == 0, out
    assert "3 shard(s)" in out
    for user, score in [("a", 50), ("b", 500), ("c", 5000), ("d", 700)]:
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="weekly", user_id=user, score=score))

    code, out = _run(control_plane_dsn, "shards", "list", "--leaderboard", "weekly", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["id"], r["lower"], r["upper"], r["members"], r["state"]) for r in rows] == [
        ("s1", None, 100, 1, "ACTIVE"),
        ("s2", 100, 1000, 2, "ACTIVE"),
        ("s3", 1000, None, 1, "ACTIVE"),
    ]
    assert {r["node"] for r in rows} == {"n1", "n2"}

    code, out = _run(control_plane_dsn, "leaderboards", "list", "--json")
    assert json.loads(out) == [
        {
            "name": "weekly",
            "order": "asc",
            "operator": "best",
            "shards": 3,
            "epoch": 1,
            "boundaries": [100, 1000],
            "expected_members": 2_000_000,
        }
    ]
    code, out = _run(control_plane_dsn, "nodes", "list", "--json")
    assert [n["address"] for n in json.loads(out)] == node_addresses

    code, out = _run(control_plane_dsn, "shards", "list", "--leaderboard", "weekly")
    assert out.splitlines()[0].split() == ["ID", "LOWER", "UPPER", "NODE", "MEMBERS", "STATE"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["leaderboards", "create", "weekly"], "already exists"),
        (["leaderboards", "create", "bad name"], "leaderboard"),
        (["leaderboards", "create", "x", "--boundaries", "5,3"], "boundaries[1]"),
        (["leaderboards", "create", "x", "--boundaries", "a,b"], "--boundaries"),
        (["shards", "list", "--leaderboard", "missing"], "missing"),
        (["nodes", "add", "nonsense"], "host:port"),
        (["leaderboards", "create", "x", "--expected-members", "-1"], "--expected-members"),
    ],
)
def test_errors_are_one_clear_line(control_plane_dsn: str, client: Client, args: list[str], message: str) -> None:
    client.create("weekly")
    code, out = _run(control_plane_dsn, *args)
    assert code != 0
    assert message in out
    code, out = _run(control_plane_dsn, "leaderboards", "list", "--json")
    assert [b["name"] for b in json.loads(out)] == ["weekly"]  # nothing was created
    assert "Traceback" not in out


def test_delete_asks_or_takes_yes_and_removes_the_board(
    control_plane_dsn: str, client: Client, node_addresses: list[str]
) -> None:
    client.create("weekly", boundaries=[10])
    client.create("daily")
    for board in ("weekly", "daily"):
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id="a", score=50))

    # No terminal to ask on, and no --yes: refused in one line, nothing deleted.
    refused = CliRunner().invoke(main, ["--control-plane", control_plane_dsn, "leaderboards", "delete", "weekly"])
    assert refused.exit_code != 0 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
    assert [b["name"] for b in json.loads(_run(control_plane_dsn, "leaderboards", "list", "--json")[1])] == [
        "daily",
        "weekly",
    ]

    code, out = _run(control_plane_dsn, "leaderboards", "delete", "weekly", "--yes")
    assert code == 0, out
    assert "deleted leaderboard weekly" in out
    assert [b["name"] for b in json.loads(_run(control_plane_dsn, "leaderboards", "list", "--json")[1])] == ["daily"]
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as node:
            assert list(node.scan_iter(match="rs:?:weekly/*")) == []
            assert list(node.scan_iter(match="rs:?:daily/*"))

    for args, message in [(["weekly", "--yes"], "leaderboard 'weekly' not found"), (["bad name", "--yes"], "name")]:
        result = CliRunner().invoke(main, ["--control-plane", control_plane_dsn, "leaderboards", "delete", *args])
        assert result.exit_code != 0 and result.stderr.count("\n") == 1 and message in result.stderr, result.output


def test_delete_on_a_terminal_asks_first(control_plane_dsn: str, client: Client) -> None:
    client.create("weekly")
    argv = [
        sys.executable,
        "-m",
        "rankshard.cli",
        "--control-plane",
        control_plane_dsn,
        "leaderboards",
        "delete",
        "weekly",
    ]
    assert "Aborted" in _on_a_terminal(argv, "n")
    assert client.admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="weekly"), timeout=10).name == "weekly"
    assert "deleted leaderboard weekly" in _on_a_terminal(argv, "y")
    assert json.loads(_run(control_plane_dsn, "leaderboards", "list", "--json")[1]) == []


def _on_a_terminal(argv: list[str], answer: str, timeout: float = 30.0) -> str:
    """Runs `argv` on a pseudo-terminal, answers its prompt with `answer`; returns all it printed."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, stdin=secondary, stdout=secondary, stderr=secondary, env=os.environ.copy())
    os.close(secondary)
    output, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"[y/N]" in output:
                os.write(primary, answer.encode() + b"\n")
                answered = True
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    assert answered, output
    return output.decode(errors="replace")


def test_without_a_control_plane_the_error_says_how_to_get_one(tmp_path) -> None:
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path), "nodes", "list"], env={"RANKSHARD_CONTROL_PLANE": ""}
    )
    assert result.exit_code != 0
    assert "cluster up" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_everything() -> None:
    result = CliRunner().invoke(main, ["demo", "--games", "400", "--players", "50"])
    assert result.exit_code == 0, result.output
    assert "Top 10:" in result.output and "Around player-" in result.output
    assert "cluster stopped" in result.output
