"""Pure tests of the rebalance planner (`shard_map._planner`): plans tile, never undo themselves, reach the
threshold when the shards can be cut finely enough, move little more than needed, and print the same text."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rankshard.shard_map import (
    InvalidArgument,
    Merge,
    Move,
    Plan,
    ServingNode,
    Shard,
    ShardMap,
    ShardState,
    ShardStats,
    Split,
    apply_plan,
    expected_stats,
    plan_drain,
    plan_rebalance,
    step_limit,
    tiling_problems,
)

GOLDEN = Path(__file__).parent / "data" / "rebalance_dry_run.txt"
WIDTH = 1000
"""Every generated shard spans at least this many scores (more than it has members: scores can be distinct)."""


def quantiles_of(scores: list[int], count: int = 64) -> tuple[int, ...]:
    """`count` (at most one per member) scores at evenly spaced ranks, as ShardStats documents."""
    ordered, m = sorted(scores), len(scores)
    k = min(count, m)
    if k <= 1:
        return tuple(ordered[:1])
    return tuple(ordered[(2 * i * (m - 1) + (k - 1)) // (2 * (k - 1))] for i in range(k))


@dataclass
class Scenario:
    shard_map: ShardMap
    stats: list[ShardStats]
    scores: dict[str, list[int]]
    nodes: list[ServingNode]
    pct: float

    @property
    def next_shard(self) -> int:
        return len(self.shard_map.shards) + 1

    def plan(self) -> Plan:
        return plan_rebalance(
            self.shard_map, self.stats, self.nodes, next_shard=self.next_shard, threshold_pct=self.pct
        )

    def receivers(self) -> set[str]:
        return {n.id for n in self.nodes if n.share > 0}


def build(
    layout: list[tuple[str, int]], cuts: list[int], nodes: list[ServingNode], *, pct: float = 10, **kw: int
) -> Scenario:
    """Shards s1.. over `cuts` ([lower, upper) ascending), each (node, members) of `layout`, members at
    distinct scores spread over the shard (or all at one score with `tie=<shard number>`), 64 quantiles
    unless `quantiles=` says otherwise."""
    rnd = random.Random(kw.get("seed", 0))
    edges: list[int | None] = [None, *cuts, None]
    shards, stats, scores = [], [], {}
    for i, (node, members) in enumerate(layout, start=1):
        lower, upper = edges[i - 1], edges[i]
        low = lower if lower is not None else (upper if upper is not None else WIDTH) - WIDTH
        span = (upper if upper is not None else low + WIDTH) - low
        drawn = [low] * members if kw.get("tie") == i else rnd.sample(range(low, low + span), members)
        shard = Shard(f"s{i}", lower, upper, node)
        shards.append(shard)
        scores[shard.id] = sorted(drawn)
        stats.append(ShardStats(shard, members, quantiles_of(drawn, kw.get("quantiles", 64))))
    return Scenario(ShardMap("b", 1, tuple(shards)), stats, scores, nodes, pct)


@st.composite
def scenarios(draw: st.DrawFn, fine: bool) -> Scenario:
    """Up to 5 nodes (some weighted, some drained) and 8 shards. `fine`: one quantile per member at distinct
    scores (every cut the planner estimates is exact); else few quantiles and ties at one score too."""
    count = draw(st.integers(1, 5))
    weights = st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5, 0.0])
    nodes = [ServingNode(f"n{i}", draw(weights), draw(st.integers(0, 5)) == 0) for i in range(1, count + 1)]
    if not any(n.share > 0 for n in nodes):
        nodes[-1] = ServingNode(nodes[-1].id)
    shard_count = draw(st.integers(1, 8))
    cuts = sorted(draw(st.sets(st.integers(-50, 50), min_size=shard_count - 1, max_size=shard_count - 1)))
    ids = [n.id for n in nodes]
    members = st.integers(20, 400) if fine else st.integers(0, 400)
    layout = [(draw(st.sampled_from(ids)), draw(members)) for _ in range(shard_count)]
    kw = {"seed": draw(st.integers(0, 2**16))}
    if fine:
        kw["quantiles"] = WIDTH
    else:
        kw["quantiles"] = draw(st.sampled_from([1, 2, 3, 8, 64]))
        kw["tie"] = draw(st.integers(0, shard_count))
    pct = draw(st.sampled_from([10.0, 10.0, 25.0]))
    return build(layout, [c * WIDTH for c in cuts], nodes, pct=pct, **kw)


def reachable(scenario: Scenario) -> bool:
    """The exact condition under which the plan must reach the threshold: one quantile per member at
    distinct scores (`fine`), and every receiving node's tolerance (PCT of its target) at least one member."""
    total = sum(s.members for s in scenario.stats)
    weight = sum(n.share for n in scenario.nodes)
    return all(total * n.share / weight * scenario.pct / 100 >= 1 for n in scenario.nodes if n.share > 0)


def loads_after(scenario: Scenario, plan: Plan) -> dict[str, int]:
    after = {n.id: 0 for n in scenario.nodes}
    for s in expected_stats(plan):
        after[s.shard.node] += s.members
    return after


def within(plan: Plan) -> bool:
    return all(abs(n.after - n.target) <= n.target * plan.threshold_pct / 100 for n in plan.loads)


# ---- properties ------------------------------------------------------------------------------------------


@settings(database=None, max_examples=150, deadline=None)
@given(scenario=st.one_of(scenarios(fine=True), scenarios(fine=False)))
def test_a_plan_tiles_and_leaves_every_shard_on_a_node_that_receives(scenario):
    plan = scenario.plan()
    after = apply_plan(scenario.shard_map, plan)
    assert tiling_problems(after.shards) == []
    assert {s.node for s in after.shards} <= scenario.receivers()
    assert len(plan.steps) <= step_limit(len(scenario.nodes), len(scenario.stats))
    assert {n.node: n.after for n in plan.loads} == loads_after(scenario, plan)


@settings(database=None, max_examples=150, deadline=None)
@given(scenario=st.one_of(scenarios(fine=True), scenarios(fine=False)))
def test_no_step_undoes_another(scenario):
    """No shard moves twice, none moves back to a node its data came from, no merge rejoins a split."""
    plan = scenario.plan()
    origins = {s.shard.id: {s.shard.id} for s in scenario.stats}
    homes = {s.shard.id: s.shard.node for s in scenario.stats}
    moved: list[str] = []
    for step in plan.steps:
        if isinstance(step, Split):
            origins[step.new_shard] = set(origins[step.shard])
        elif isinstance(step, Move):
            moved.append(step.shard)
            assert step.target not in {homes[o] for o in origins[step.shard]}
        else:
            assert not origins[step.shard] & origins[step.with_], step
            origins[step.shard] |= origins.pop(step.with_)
    assert len(moved) == len(set(moved))


@settings(database=None, max_examples=100, deadline=None)
@given(scenario=scenarios(fine=True))
def test_fine_grained_shards_reach_the_threshold_moving_at_most_twice_the_surplus(scenario):
    assume(reachable(scenario))
    plan = scenario.plan()
    assert plan.reason is None or not plan.steps, plan.format()
    assert within(plan), plan.format()
    surplus = sum(max(0.0, n.before - n.target) for n in plan.loads)
    assert plan.members_moved <= 2 * surplus, plan.format()


@settings(database=None, max_examples=100, deadline=None)
@given(scenario=scenarios(fine=True))
def test_splits_of_fine_grained_shards_estimate_both_sides_exactly(scenario):
    plan = scenario.plan()
    scores = dict(scenario.scores)
    for step in plan.steps:
        if isinstance(step, Split):
            below = [s for s in scores[step.shard] if s < step.at]
            scores[step.shard], scores[step.new_shard] = below, scores[step.shard][len(below) :]
            assert (step.left_members, step.right_members) == (len(below), len(scores[step.new_shard]))
            assert step.left_members > 0 and step.right_members > 0


@settings(database=None, max_examples=100, deadline=None)
@given(scenario=scenarios(fine=True))
def test_planning_again_after_a_plan_that_reached_the_threshold_finds_nothing(scenario):
    assume(reachable(scenario))
    plan = scenario.plan()
    splits = sum(isinstance(step, Split) for step in plan.steps)
    again = plan_rebalance(
        apply_plan(scenario.shard_map, plan),
        expected_stats(plan),
        scenario.nodes,
        next_shard=scenario.next_shard + splits,
        threshold_pct=scenario.pct,
    )
    assert again.steps == ()
    assert again.reason is not None and again.reason.startswith("nothing to do")


@settings(database=None, max_examples=50, deadline=None)
@given(scenario=scenarios(fine=False))
def test_the_same_inputs_in_any_order_give_the_same_plan_and_text(scenario):
    plan = scenario.plan()
    shuffled = plan_rebalance(
        scenario.shard_map,
        scenario.stats[::-1],
        scenario.nodes,
        next_shard=scenario.next_shard,
        threshold_pct=scenario.pct,
    )
    assert shuffled == plan and shuffled.format() == plan.format()


# ---- examples --------------------------------------------------------------------------------------------

THREE = [ServingNode("n1"), ServingNode("n2"), ServingNode("n3")]


def golden_scenario() -> Scenario:
    layout = [("n1", 300), ("n2", 350), ("n3", 40), ("n3", 30), ("n1", 420)]
    return build(layout, [0, 1200, 1500, 2000], THREE, seed=7)


def test_the_dry_run_text_of_a_fixed_scenario_is_the_golden_file():
    assert golden_scenario().plan().format() == GOLDEN.read_text(encoding="utf-8")


def test_a_balanced_board_has_nothing_to_do():
    plan = build([("n1", 100), ("n2", 95), ("n3", 105)], [0, 1000], THREE).plan()
    assert plan.steps == ()
    assert plan.format().endswith("nothing to do: every node is within 10% of its target\n")


def test_a_tie_at_one_score_is_reported_not_cut():
    plan = build([("n1", 500), ("n2", 0)], [0], THREE[:2], tie=1).plan()
    assert plan.steps == ()
    assert plan.reason is not None and "s1 holds 500 members at one score (-1000), a tie" in plan.reason


def test_a_node_of_weight_zero_is_drained_first():
    nodes = [ServingNode("n1", 0.0), ServingNode("n2"), ServingNode("n3")]
    scenario = build([("n1", 200), ("n2", 100), ("n1", 50), ("n3", 150)], [0, 1000, 2000], nodes)
    plan = scenario.plan()
    assert isinstance(plan.steps[0], Split | Move) and plan.steps[0].shard in {"s1", "s3"}
    assert all(s.node != "n1" for s in apply_plan(scenario.shard_map, plan).shards)
    assert within(plan)
    assert plan.format().splitlines()[-1].startswith("after    n1 0 (drain)  n2 250 (0%)")


def test_adjacent_small_shards_on_one_node_merge_left_id_surviving():
    scenario = build([("n1", 600), ("n2", 20), ("n2", 30), ("n2", 200)], [0, 1000, 2000], THREE[:2])
    plan = scenario.plan()
    assert Merge("s2", "s3", 50) in plan.steps
    assert "s3" not in {s.id for s in apply_plan(scenario.shard_map, plan).shards}


def test_plan_drain_moves_the_largest_shards_first_to_the_least_loaded_nodes():
    scenario = build([("n1", 100), ("n2", 300), ("n1", 250), ("n3", 50)], [0, 1000, 2000], THREE)
    plan = plan_drain(scenario.shard_map, scenario.stats, "n1", THREE)
    assert plan.steps == (Move("s3", "n1", "n3", 250), Move("s1", "n1", "n2", 100))
    assert all(s.node != "n1" for s in apply_plan(scenario.shard_map, plan).shards)


def test_draining_the_last_serving_node_is_refused():
    nodes = [ServingNode("n1"), ServingNode("n2", draining=True)]
    scenario = build([("n1", 10), ("n2", 10)], [0], nodes)
    with pytest.raises(InvalidArgument, match="n1 is the last serving node"):
        plan_drain(scenario.shard_map, scenario.stats, "n1", nodes)
    with pytest.raises(InvalidArgument, match="no node can take shards"):
        plan_rebalance(scenario.shard_map, scenario.stats, [ServingNode("n1", 0.0), nodes[1]], next_shard=3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nodes": [ServingNode("n1")]}, "nodes"),
        ({"next_shard": 2}, "next_shard"),
        ({"threshold_pct": 0}, "threshold_pct"),
        ({"stats": []}, "stats"),
    ],
)
def test_inputs_that_do_not_fit_the_map_are_refused(change, field):
    scenario = build([("n1", 10), ("n2", 10)], [0], THREE[:2])
    args = {"nodes": scenario.nodes, "next_shard": 3, "stats": scenario.stats, **change}
    with pytest.raises(InvalidArgument) as raised:
        plan_rebalance(scenario.shard_map, **args)
    assert raised.value.field == field


def test_a_map_with_a_job_in_flight_is_not_planned():
    scenario = build([("n1", 10), ("n2", 10)], [0], THREE[:2])
    migrating = replace(scenario.shard_map.shards[0], state=ShardState.MIGRATING)
    shard_map = ShardMap("b", 2, (migrating, scenario.shard_map.shards[1]))
    stats = [replace(scenario.stats[0], shard=migrating), scenario.stats[1]]
    with pytest.raises(InvalidArgument, match="s1 is MIGRATING"):
        plan_rebalance(shard_map, stats, scenario.nodes, next_shard=3)
