"""`rankshard leaderboards import`: members new to a board in bulk, through the CLI, read back through a
real router over two real nodes; bad input is refused before anything is written."""

from __future__ import annotations

import dataclasses

import pytest
from _router import Client
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.shard_map import ControlPlane
from rankshard.v1 import leaderboard_pb2 as pb

CUTS = [10, 20, 30]


def _import(dsn: str, board: str, text: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--control-plane", dsn, "leaderboards", "import", board, "-"], input=text)
    return result.exit_code, result.output


def _top(client: Client, board: str) -> list[tuple[str, int, int]]:
    page = client.lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=1000), timeout=10)
    return [(e.user_id, e.score, e.rank) for e in page.entries]


def _expected(scores: dict[str, int], descending: bool = True) -> list[tuple[str, int, int]]:
    sign = -1 if descending else 1
    rows = sorted(scores.items(), key=lambda us: (sign * us[1], us[0].encode()))
    better = (lambda a, b: a > b) if descending else (lambda a, b: a < b)
    return [(u, s, 1 + sum(1 for v in scores.values() if better(v, s))) for u, s in rows]


@pytest.mark.parametrize("expected", [0, 10**8], ids=["default-layout", "sized-for-1e8"])
def test_import_adds_new_members_and_leaves_the_others_as_they_are(client, control_plane_dsn, expected):
    client.create("imp", boundaries=CUTS, expected_members=expected)
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="imp", user_id="kept", score=3), timeout=10)
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="imp", user_id="gone", score=4), timeout=10)
    client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard="imp", user_id="gone"), timeout=10)
    # 2,500 members: several chunks, every shard, both index nodes; ids with a comma and non-ASCII.
    scores = {f"p{i:04d}": (i * 37) % 61 - 15 for i in range(2500)}
    scores["a,b"] = 12
    scores["émile"] = 30
    lines = [f"{u},{s}" for u, s in scores.items()] + ["kept,50", "gone,60", ""]
    code, out = _import(control_plane_dsn, "imp", "\n".join(lines))
    assert code == 0, out
    assert "imported 2,502 members" in out and "2 already on the board" in out

    expected = _expected({**scores, "kept": 3})
    assert _top(client, "imp") == expected[:1000]
    rank = client.lb.GetRank(pb.GetRankRequest(leaderboard="imp", user_id="a,b"), timeout=10)
    assert (rank.entry.score, rank.entry.rank, rank.total) == (12, dict((u, r) for u, _, r in expected)["a,b"], 2503)
    # An imported member goes on from its imported score.
    after = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="imp", user_id="p0001", score=5), timeout=10)
    assert after.score == scores["p0001"] + 5

    # Running the same import again changes nothing.
    code, out = _import(control_plane_dsn, "imp", "\n".join(lines))
    assert code == 0 and "imported 0 members" in out, out
    assert _top(client, "imp")[0] == _expected({**scores, "kept": 3, "p0001": scores["p0001"] + 5})[0]

    # Every invariant of the board holds (index and shards agree).
    result = CliRunner().invoke(main, ["--control-plane", control_plane_dsn, "check", "-l", "imp"])
    assert result.exit_code == 0, result.output


def test_an_import_that_meets_a_moved_shard_counts_every_member_once(client, control_plane_dsn, monkeypatch):
    """The importer's first map is one generation behind its nodes' (as if a shard had moved just before):
    the first chunks' index entries land, their shard writes are refused, and the chunks go again on the
    new map, where those members already have an entry. They were added by this import all the same."""
    client.create("moved", boundaries=CUTS)
    real = ControlPlane.shard_map
    calls = 0

    async def first_one_stale(self, board):
        nonlocal calls
        calls += 1
        current = await real(self, board)
        if calls > 1:
            return current
        return dataclasses.replace(
            current, shards=tuple(dataclasses.replace(s, generation=s.generation - 1) for s in current.shards)
        )

    monkeypatch.setattr(ControlPlane, "shard_map", first_one_stale)
    scores = {f"m{i:04d}": i % 40 for i in range(5000)}
    code, out = _import(control_plane_dsn, "moved", "\n".join(f"{u},{s}" for u, s in scores.items()))
    monkeypatch.undo()
    assert code == 0, out
    assert calls > 1, "the import never met the stale map"
    assert "imported 5,000 members" in out and "0 already on the board" in out, out
    assert _top(client, "moved") == _expected(scores)[:1000]
    result = CliRunner().invoke(main, ["--control-plane", control_plane_dsn, "check", "-l", "moved"])
    assert result.exit_code == 0, result.output


def test_removed_members_are_not_brought_back(client, control_plane_dsn):
    client.create("rm")
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="rm", user_id="gone", score=4), timeout=10)
    client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard="rm", user_id="gone"), timeout=10)
    code, out = _import(control_plane_dsn, "rm", "gone,9\nnew,1\n")
    assert code == 0 and "imported 1 members" in out, out
    assert _top(client, "rm") == [("new", 1, 1)]


def test_bad_input_names_its_line_and_imports_nothing(client, control_plane_dsn):
    client.create("bad", boundaries=CUTS)
    good = "".join(f"u{i},{i}\n" for i in range(1500))
    cases = {
        "u1,5\nu2\n": ("line 2", "user_id,score"),
        "u1,5\nu2,x\n": ("line 2", "score"),
        "u1,5\nu2,9007199254740992\n": ("line 2", "score"),
        "u1,5\n,3\n": ("line 2", "user_id"),
        "u1,5\nu\x01x,3\n": ("line 2", "control character"),
        good + "u7,1\n": ("line 1501", "also on line 8"),
    }
    for text, (where, what) in cases.items():
        code, out = _import(control_plane_dsn, "bad", text)
        assert code != 0 and where in out and what in out and "nothing was imported" in out, (text[-30:], out)
    assert _top(client, "bad") == []
    code, out = _import(control_plane_dsn, "nosuch", "u1,5\n")
    assert code != 0 and "nosuch" in out
