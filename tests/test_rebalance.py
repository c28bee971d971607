"""`rankshard rebalance` and `rankshard nodes drain` through the real CLI, over a real router, control plane and
three nodes: plans carried out under live writes leave every node within the threshold and every rank exact;
`--dry-run` prints the same plan twice and changes nothing; a drained node is emptied and gets no new shard
until undrained;
bad input is one line and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from _fixtures_cluster import serve
from _router import Client, bootstrap
from click.testing import CliRunner, Result
from test_carve import BOARD, USERS, Writer

from rankshard.cli import main
from rankshard.cli._local import LocalValkey
from rankshard.shard_map import ControlPlane, Job, JobState, JobStep, NodeUnavailable, Plan, ShardMap, plan_rebalance
from rankshard.shard_node import (
    Carver,
    Cluster,
    JobRunner,
    PlanStepFailed,
    audit_board,
    board_stats,
    carry_out,
    connect_cluster,
    plan_merge,
    serving_nodes,
    shard_sizes,
)
from rankshard.shard_node._layout import BoardLayout
from rankshard.v1 import leaderboard_pb2 as pb

STILL = [f"x{i}" for i in range(300)]
"""Members no writer touches, on top of the writer's `USERS`."""
CUTS = [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
"""Seven shards dealt over n1, n2, n3 in turn: s1, s4 and s7 on n1."""


@pytest.fixture
def three(control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey) -> Iterator[Client]:
    """A router over n1 and n2 (the session's nodes, owning every index slot) and n3 (`fresh_valkey`, none)."""
    yield from serve(control_plane_dsn, node_addresses, extra=[fresh_valkey.address])


def _invoke(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--control-plane", dsn, *args])


def _ok(dsn: str, *args: str) -> str:
    result = _invoke(dsn, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _one_error_line(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _seed(client: Client, scores: dict[str, int]) -> None:
    updates = [pb.ScoreUpdate(user_id=u, score=s) for u, s in scores.items()]
    for i in range(0, len(updates), 100):
        client.lb.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates[i : i + 100]))


def _skewed() -> dict[str, int]:
    """Most members in s1 (n1): 450 of 600 score below the first cut, the rest spread over the other shards."""
    scores = {u: 17 * i for i, u in enumerate(USERS)}  # 0 .. 5083, in s1
    scores |= {u: 13 * i for i, u in enumerate(STILL[:150])}
    scores |= {u: 10_000 + 333 * i for i, u in enumerate(STILL[150:])}  # 10,000 .. 59,617: s2 .. s6
    return scores


async def _state(dsn: str) -> tuple[ShardMap, dict[str, int], list[object]]:
    """The board's map, members per node (clipped counts) and what `rankshard check` would find."""
    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            layout = BoardLayout(await cp.get_board(BOARD), await cp.shard_map(BOARD))
            sizes = await shard_sizes(cluster, layout)
            findings = await audit_board(cluster, layout)
        finally:
            await cluster.aclose()
    per_node = dict.fromkeys(("n1", "n2", "n3"), 0)
    for shard in layout.map.shards:
        per_node[shard.node] += sizes[shard.id]
    return layout.map, per_node, list(findings)


def _ranks_exact(client: Client, expected: dict[str, int]) -> None:
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=10)
    assert top.total == len(expected)
    model = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    assert [(e.user_id, e.score) for e in top.entries] == model
    for entry in top.entries[::37]:
        rank = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=entry.user_id), timeout=10)
        assert rank.entry.rank == 1 + sum(1 for s in expected.values() if s > entry.score)


def test_rebalance_under_writes_brings_every_node_within_the_threshold_and_keeps_ranks_exact(
    three: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    three.create(BOARD, boundaries=CUTS)
    scores = _skewed()
    _seed(three, scores)
    before, loads, _ = asyncio.run(_state(dsn))
    assert loads["n1"] > 2 * (loads["n2"] + loads["n3"])

    dry = [_ok(dsn, "rebalance", "-l", BOARD, "--dry-run") for _ in range(2)]
    assert dry[0] == dry[1]
    assert "1. " in dry[0] and "dry run: nothing was changed" in dry[0]
    assert asyncio.run(_state(dsn))[0] == before

    writer = Writer(three, seed=11)
    writer.expected = {u: scores[u] for u in USERS}
    writer.start()
    writer.wait_for(30)
    try:
        out = _ok(dsn, "rebalance", "--leaderboard", BOARD)
    finally:
        writer.stop()
    assert out.startswith("prechecks: 3 serving node(s) answer; no job in flight\n")
    assert "step 1: job " in out and f"leaderboard {BOARD}: " in out

    after, loads, findings = asyncio.run(_state(dsn))
    assert findings == []
    target = len(scores) / 3
    assert all(abs(load - target) <= 0.1 * target for load in loads.values()), loads
    assert after.epoch > before.epoch
    _ranks_exact(three, {**scores, **writer.expected})

    again = _ok(dsn, "rebalance", "-l", BOARD)
    assert "nothing to do: every node is within 10% of its target" in again
    assert asyncio.run(_state(dsn))[0] == after


def _nodes(dsn: str) -> dict[str, dict[str, object]]:
    return {n["id"]: n for n in json.loads(_ok(dsn, "nodes", "list", "--json"))}


def test_drain_moves_every_shard_off_and_the_node_gets_no_new_one(three: Client, control_plane_dsn: str) -> None:
    dsn = control_plane_dsn
    three.create(BOARD, boundaries=[100, 200, 300, 400, 500])
    scores = {u: 5 * i for i, u in enumerate(USERS[:120])}
    _seed(three, scores)
    listed = _nodes(dsn)
    assert [listed[n]["shards"] for n in ("n1", "n2", "n3")] == [2, 2, 2]
    assert sum(int(str(listed[n]["members"])) for n in listed) == 120

    out = _ok(dsn, "nodes", "drain", "n3")
    assert "node n3 is DRAINING: it gets no new shard" in out
    assert out.endswith("node n3 is drained: it holds no shard\n")
    listed = _nodes(dsn)
    assert (listed["n3"]["state"], listed["n3"]["shards"], listed["n3"]["members"]) == ("DRAINING", 0, 0)
    assert _ok(dsn, "leaderboards", "create", "weekly", "--boundaries", "10,20,30")
    assert _nodes(dsn)["n3"]["shards"] == 0  # the new board's four shards went to n1 and n2
    assert _ok(dsn, "nodes", "remove", "n3").startswith("removed node n3")

    out = _ok(dsn, "nodes", "drain", "n2")
    assert out.endswith(
        "node n2 is drained: it holds no shard; its 512 index slot(s) stay on it (index slots cannot move)\n"
    )
    line = _one_error_line(_invoke(dsn, "nodes", "remove", "n2"))
    assert "node n2 owns 512 index slot(s)" in line and "shard(s)" not in line
    assert _ok(dsn, "nodes", "undrain", "n2").startswith("node n2 is ACTIVE: new shards may be placed on it")
    assert _ok(dsn, "nodes", "undrain", "n2") == "node n2 is already ACTIVE; nothing was changed\n"
    assert _nodes(dsn)["n2"]["state"] == "ACTIVE"
    out = _ok(dsn, "rebalance", "-l", BOARD)
    assert int(str(_nodes(dsn)["n2"]["members"])) > 0, out  # a rebalance gives an undrained node its share
    assert _ok(dsn, "nodes", "drain", "n2").endswith("(index slots cannot move)\n")

    epoch = asyncio.run(_state(dsn))[0].epoch
    line = _one_error_line(_invoke(dsn, "nodes", "drain", "n1"))
    assert (
        line == "rankshard: node n1 is the last serving node: no other node could take its shards; nothing was changed"
    )
    assert _nodes(dsn)["n1"]["state"] == "ACTIVE" and asyncio.run(_state(dsn))[0].epoch == epoch
    assert asyncio.run(_state(dsn))[2] == []
    _ranks_exact(three, scores)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nodes", "drain", "n9"], 1, "rankshard: node 'n9' not found; nothing was changed"),
        (["nodes", "undrain", "n9"], 1, "rankshard: node 'n9' not found; nothing was changed"),
        (["rebalance", "-l", BOARD, "--weight", "n1"], 2, "'n1' is not NODE=W with W a number >= 0"),
        (["rebalance", "-l", BOARD, "--weight", "n1=lots"], 2, "'n1=lots' is not NODE=W"),
        (["rebalance", "-l", BOARD, "--weight", "n1=-1"], 2, "'n1=-1' is not NODE=W"),
        (["rebalance", "-l", BOARD, "--weight", "n9=2"], 1, "no registered node 'n9'"),
        (["rebalance", "-l", BOARD, "--threshold", "0"], 2, "--threshold"),
        (["rebalance", "-l", BOARD, "--threshold", "150"], 2, "--threshold"),
        (["rebalance", "-l", "nosuch"], 1, "'nosuch' not found"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    control_plane_dsn: str, node_addresses: list[str], args: list[str], code: int, message: str
) -> None:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    assert _invoke(control_plane_dsn, "leaderboards", "create", BOARD, "--boundaries", "100").exit_code == 0
    before = _ok(control_plane_dsn, "shards", "list", "-l", BOARD, "--json")
    assert message in _one_error_line(_invoke(control_plane_dsn, *args), code)
    assert _ok(control_plane_dsn, "shards", "list", "-l", BOARD, "--json") == before
    assert {n["state"] for n in _nodes(control_plane_dsn).values()} == {"ACTIVE"}


async def _plan_now(cp: ControlPlane, cluster: Cluster) -> Plan:
    layout = BoardLayout(await cp.get_board(BOARD), await cp.shard_map(BOARD))
    nodes = await serving_nodes(cp)
    return plan_rebalance(layout.map, await board_stats(cluster, layout), nodes, next_shard=8)


def test_a_step_that_fails_stops_the_plan_and_rebalance_plans_again_from_where_the_board_stands(
    three: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    three.create(BOARD, boundaries=CUTS)
    scores = _skewed()
    _seed(three, scores)

    def crash_at_copy(job: Job) -> None:
        if job.step is JobStep.COPY:
            raise NodeUnavailable("n1", "lost in the middle of the copy")

    async def crashed() -> tuple[Plan, PlanStepFailed]:
        async with await ControlPlane.open(dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                plan = await _plan_now(cp, cluster)
                crashing = Carver(cp, cluster, "test", on_step=crash_at_copy)
                with pytest.raises(PlanStepFailed) as left_running:
                    await carry_out(cp, cluster, BOARD, plan, "test", _runner(crashing))
                return plan, left_running.value
            finally:
                await cluster.aclose()

    async def finished_then_outdated(plan: Plan, job: Job) -> PlanStepFailed:
        """The job finished by hand: the plan made before it no longer fits the map."""
        async with await ControlPlane.open(dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                await Carver(cp, cluster, "test").run(job)
                with pytest.raises(PlanStepFailed) as outdated:
                    await carry_out(cp, cluster, BOARD, plan, "test", _runner(Carver(cp, cluster, "test")))
                return outdated.value
            finally:
                await cluster.aclose()

    plan, left_running = asyncio.run(crashed())
    before = asyncio.run(_state(dsn))[0]
    line = _one_error_line(_invoke(dsn, "rebalance", "-l", BOARD))
    assert line.endswith("is in flight at COPY: finish it with `rankshard jobs resume 1` first; nothing was changed")
    assert asyncio.run(_state(dsn))[0] == before
    assert left_running.job is not None
    outdated = asyncio.run(finished_then_outdated(plan, left_running.job))
    assert str(left_running).startswith("step 1 (split s1 at ")
    assert "node n1: lost in the middle of the copy; it is left COPY: `rankshard jobs resume 1` finishes it" in str(
        left_running
    )
    assert str(outdated).endswith(
        "steps before it are done. Run `rankshard rebalance` again to plan from the current state"
    )
    assert str(outdated).startswith("step 1 (split s1 at ") and "not inside shard s1" in str(outdated)

    out = _ok(dsn, "rebalance", "-l", BOARD)
    assert "step 1: job 2 " in out
    _, loads, findings = asyncio.run(_state(dsn))
    assert findings == [] and all(abs(load - 200) <= 20 for load in loads.values()), loads
    _ranks_exact(three, scores)


def _runner(carver: Carver) -> JobRunner:
    async def run(_number: int, job: Job) -> Job:
        return await carver.run(job)

    return run


def test_a_planned_merge_keeps_the_shard_the_plan_names_even_the_smaller(
    client: Client, control_plane_dsn: str
) -> None:
    client.create(BOARD, boundaries=[100])
    scores = {u: i for i, u in enumerate(USERS[:10])} | {u: 100 + i for i, u in enumerate(USERS[10:40])}
    _seed(client, scores)

    async def merge() -> tuple[Job, ShardMap]:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                job = await plan_merge(cp, cluster, BOARD, "s2", "s1", "test", 30, survivor="s1")
                done = await Carver(cp, cluster, "test").run(job)
                return done, await cp.shard_map(BOARD)
            finally:
                await cluster.aclose()

    job, after = asyncio.run(merge())
    assert (job.source, job.target, job.state) == ("s2", "s1", JobState.DONE)
    assert [(s.id, s.lower, s.upper, s.node) for s in after.shards] == [("s1", None, None, "n1")]
    _ranks_exact(client, scores)
