"""`rankshard bench`: the traffic model, the histogram, the capacity plan, and a smoke run end to end.

The smoke run asserts that a real run produces a well-formed report and stops what it started, never
any speed: a benchmark is not a test.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankshard.benchmarks import PROFILES, TrafficModel
from rankshard.benchmarks._capacity import GIB, Headroom, Measured, plan
from rankshard.benchmarks._hist import Histogram
from rankshard.benchmarks._loadgen import merge
from rankshard.benchmarks._report import PLOTS
from rankshard.benchmarks._suite import ONE_NODE_MEMBERS

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_model_peaks_near_290k_updates_a_second() -> None:
    rates = TrafficModel().peak_rates()
    assert 285_000 < rates["update"] < 295_000
    assert rates["rank"] == rates["update"] and rates["top"] == rates["update"]
    assert rates["around"] == pytest.approx(0.2 * rates["update"])
    assert sum(TrafficModel().mix().values()) == pytest.approx(1.0)


def test_bad_model_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="dau"):
        TrafficModel(dau=0)
    with pytest.raises(ValueError, match="new_player_share"):
        TrafficModel(new_player_share=1.5)


def test_boundaries_cut_the_score_distribution_into_equal_populations() -> None:
    model = TrafficModel()
    cuts = model.boundaries(8)
    assert cuts == sorted(set(cuts)) and len(cuts) == 7
    rng = random.Random(99)  # a different sample than the one the cuts came from
    counts = [0] * 8
    for _ in range(40_000):
        score = model.sample_score(rng)
        counts[sum(score >= c for c in cuts)] += 1
    assert max(counts) < 1.15 * min(counts), counts


@given(
    st.lists(st.integers(min_value=0, max_value=10**8), min_size=1, max_size=400), st.sampled_from([50, 90, 99, 99.9])
)
def test_histogram_percentiles_are_within_a_thirty_second_of_the_exact_value(values: list[int], p: float) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    exact = sorted(values)[max(1, round(len(values) * p / 100)) - 1]
    assert abs(h.percentile(p) - exact) <= exact / 32 + 1
    assert h.percentile(100) == max(values)


def test_histograms_merge_like_one_histogram_of_everything() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 5000, 7):
        (a if i % 2 else b).record(i)
        both.record(i)
    merged = Histogram.from_json(a.to_json()).merge(Histogram.from_json(b.to_json()))
    assert merged.counts == both.counts and merged.total == both.total and merged.max == both.max


def test_load_generator_results_merge_across_processes() -> None:
    def one(calls: int, second: int) -> dict[str, object]:
        h = Histogram()
        for i in range(calls):
            h.record(1000 + i)
        return {
            "kinds": {"update": {"calls": calls, "items": calls, "hist": h.to_json()}},
            "errors": {"UNAVAILABLE": 1},
            "shed": 2,
            "timeline": {str(second): {"items": calls, "hist": h.to_json()}},
        }

    m = merge([one(10, 0), one(5, 0), one(3, 1)])
    assert m["kinds"]["update"]["calls"] == 18 and m["kinds"]["update"]["hist"].total == 18
    assert m["errors"] == {"UNAVAILABLE": 3} and m["shed"] == 6
    assert m["timeline"][0][0] == 15 and m["timeline"][1][0] == 3


def test_capacity_plan_is_bound_by_whichever_of_cpu_and_memory_needs_more_nodes() -> None:
    model = TrafficModel()
    calls = sum(model.peak_rates().values())
    cpu_bound = plan(
        model,
        Measured(router_cpu_per_call=1e-3, node_cpu_per_call=1e-4, bytes_per_member=100),
        Headroom(router_utilisation=0.5, node_utilisation=0.5, node_memory_gib=25, replicas=1),
    )
    assert cpu_bound["router_cores"] == -(-round(calls * 1e-3 / 0.5 * 1e6) // 10**6)
    assert cpu_bound["bound_by"] == "node cpu"
    assert cpu_bound["nodes_with_replicas"] == 2 * cpu_bound["primary_nodes"]
    memory_bound = plan(model, Measured(router_cpu_per_call=1e-3, node_cpu_per_call=1e-7, bytes_per_member=200))
    assert memory_bound["bound_by"] == "memory"
    assert memory_bound["primary_nodes"] == -(-500_000_000 * 200 // (25 * GIB))


def test_capacity_plan_counts_a_size_read_on_every_node_beyond_those_measured() -> None:
    """Every count asks every node of the board: with N nodes each call costs its own work plus a size read on the
    nodes it was not measured with, and those size reads load each node alike, so past the node headroom no number
    of nodes serves the peak."""
    model = TrafficModel()
    calls = sum(model.peak_rates().values())
    own, size_read = 1e-4, 0.2 / calls  # the size reads alone keep every node 20% busy
    fits = plan(
        model,
        Measured(router_cpu_per_call=1e-3, node_cpu_per_call=own, bytes_per_member=100, size_read_cpu=size_read),
    )
    nodes = fits["primary_nodes"]
    assert fits["closes"] and fits["size_reads_busy_per_node"] == pytest.approx(0.2)
    # Each of the planned nodes at most 50% busy with the peak's own work and a size read per call on all but the
    # two measured nodes (whose size reads the measured figure holds), and one node fewer would not do.
    busy = calls * (own + (nodes - 2) * size_read) / nodes
    assert busy <= 0.5 < calls * (own + (nodes - 3) * size_read) / (nodes - 1)
    assert (
        nodes
        > plan(model, Measured(router_cpu_per_call=1e-3, node_cpu_per_call=own, bytes_per_member=100))["primary_nodes"]
    )
    too_many = plan(
        model,
        Measured(router_cpu_per_call=1e-3, node_cpu_per_call=own, bytes_per_member=100, size_read_cpu=2.2 / calls),
    )
    assert (too_many["closes"], too_many["primary_nodes"], too_many["bound_by"]) == (False, None, "size reads")
    assert too_many["count_round_to_close"] == 5  # size reads at 220%: rounds of 5 calls bring them to 44%


def test_capacity_plan_with_a_size_cache_has_each_router_read_each_nodes_sizes_once_per_bound() -> None:
    model = TrafficModel()
    calls = sum(model.peak_rates().values())
    measured = Measured(router_cpu_per_call=1e-3, node_cpu_per_call=1e-4, bytes_per_member=100, size_read_cpu=1e-4)
    assert not plan(model, measured)["closes"]  # every count asking every node: 9,259% of each node
    cached = plan(model, measured, size_cache_s=1.0)
    routers = cached["router_cores"]  # one router process per core, each reading each node's sizes once a second
    assert cached["size_reads_busy_per_node"] == pytest.approx(routers * 1e-4, abs=1e-3)
    assert cached["primary_nodes"] == math.ceil(calls * 1e-4 / (0.5 - routers * 1e-4))
    assert cached["closes"] and cached["bound_by"] == "node cpu"


def test_the_default_run_leaves_the_long_fill_and_the_extras_to_full() -> None:
    default = PROFILES["500m-dau"]
    assert max(default.memory_at) < 5_000_000 and not default.extras
    assert max(default.shard_counts) == 256
    full = default.full()
    assert 5_000_000 in full.memory_at and full.extras and full.rounds > default.rounds
    assert min(full.memory_at) == min(default.memory_at)  # the default's size is still measured


def test_the_plan_rate_interpolates_between_the_two_measured_loads() -> None:
    from rankshard.benchmarks._suite import PUSH_CAP, _rate_for

    def phase(rate: float, busy: float) -> dict[str, object]:
        return {"offered_per_s": rate, "calls_per_s": rate, "busy": {"router": busy}}

    half, capacity = phase(1000, 0.4), phase(2000, 0.8)
    assert _rate_for(0.6, half, capacity) == pytest.approx(1500)
    assert _rate_for(0.3, half, capacity) == pytest.approx(750)  # below the calibration: in proportion to it
    # A router that never gets that busy here: the rate stops short of capacity rather than build a queue.
    assert _rate_for(0.9, half, capacity) == pytest.approx(PUSH_CAP * 2000)


def test_the_goals_table_marks_reported_figures_apart_from_goals() -> None:
    from rankshard.benchmarks._report import headline

    table = headline(
        {
            "goals": [
                {"goal": "a ratio", "value": 2.5, "target": "<= 3.0", "met": True},
                {"goal": "another", "value": 4.0, "target": "<= 3.0", "met": False},
                {"goal": "beside them", "value": 9.0, "target": "reported", "met": None},
            ]
        }
    )
    assert "| a ratio | 2.50 | <= 3.0 | yes |" in table
    assert "| another | 4.00 | <= 3.0 | **no** |" in table
    assert "| beside them | 9.00 | reported | — |" in table


def _processes_under(folder: Path) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_smoke_run_writes_a_well_formed_report_and_stops_every_process(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "rankshard.cli", "bench", "--profile", "smoke", "--out", str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _processes_under(tmp_path) == []
    assert list(work.iterdir()) == []  # the run's temporary folder is gone

    result = json.loads((out / "result.json").read_text())
    profile = PROFILES["smoke"]
    goals = result["goals"]
    assert {"goal", "value", "target", "met"} <= set(goals[0])
    names = [g["goal"] for g in goals]
    for wanted in (
        "node CPU per update, BatchUpdateScores(100)",
        "node CPU per GetRank (",
        "node CPU per unary UpdateScore",
        "node CPU per GetAround(",
        "BatchUpdateScores(100) updates/s / raw pipelined redis-py",
        "UpdateScore calls per router core",
        "GetRank calls per router core",
        f"node CPU per GetRank, {max(profile.shard_counts)} shards / {min(profile.shard_counts)} shards",
        f"node CPU per UpdateScore, {max(profile.shard_counts)} shards / {min(profile.shard_counts)} shards",
        "memory all in / bare sorted set",
        "capacity plan: router busy",
        "capacity plan: nodes busy",
        "whole run, wall seconds",
        "the same node operations driven directly",  # an extra: the smoke profile runs them all
    ):
        assert any(name.startswith(wanted) or wanted in name for name in names), (wanted, names)
    assert all(g["met"] in (True, False, None) and g["value"] >= 0 for g in goals)
    assert [m["members"] for m in result["memory"]] == sorted(profile.memory_at)
    assert all(m["all_in_per_member"] > 0 and m["bare_zset_per_member"] > 0 for m in result["memory"])
    few = str(min(profile.shard_counts))
    for kind in ("update", "rank"):
        assert result["echo"][kind]["calls"] > 0
        for n in profile.shard_counts:
            measured = result["shards"][str(n)][kind]
            assert measured["calls"] > 0 and measured["errors"] == {}, measured["errors"]
            assert measured["node_us_per_item"] > 0
    assert result["shards"][few]["batch"]["errors"] == {} and result["shards"][few]["batch"]["items"] > 0
    # Node CPU per call, rankshard beside the bare sorted set on the same nodes: every call kind, both sides.
    assert len(result["node_cpu"]) == 5
    for row in result["node_cpu"]:
        assert row["node_us"] > 0 and row["bare_node_us"] > 0 and row["ratio"] > 0, row
    assert {k: result["bare"][k]["calls"] > 0 for k in ("update", "rank", "top", "around")} == dict.fromkeys(
        ("update", "rank", "top", "around"), True
    )
    assert [r["shards"] for r in result["shard_series"]] == sorted(profile.shard_counts)
    assert all(r["rank_node_us"] > 0 and r["update_node_us"] > 0 for r in result["shard_series"])
    assert result["raw"]["pipelined"]["updates_per_s"] > 0
    direct = result["raw"]["direct"]  # the node operations of a batch, without the router in between
    assert direct["updates_per_s"] > 0 and direct["node_cpu_s"] > 0 and direct["shards"] == min(profile.shard_counts)
    basis = result["plan_basis"]
    assert 0 < basis["router_busy"] < 2 and 0 < basis["node_busy"] < 2
    assert basis["node_phase"] in ("run", "nodes", "inproc", "inproc_one")
    if (one := result["simulation"]["phases"].get("inproc_one")) is not None:
        # The same routers in process on a cluster of one node holding a whole board: every call answered there.
        assert one["calls"] > 0 and one["errors"] == {} and one["node_cpu_s"] > 0 and len(one["node_cpu_by_node"]) == 1
        assert one["members"] == min(ONE_NODE_MEMBERS, max(profile.memory_at))
    measured_nodes = result["capacity"]["measured"]["measured_nodes"]
    assert measured_nodes == (1 if basis["node_phase"] == "inproc_one" else profile.nodes)
    if (inproc := result["simulation"]["phases"].get("inproc")) is not None:
        # Routers served inside the load generators: each at the simulation's rate, every call answered.
        assert inproc["routers"] >= 1 and inproc["rate_per_router"] == result["simulation"]["run"]["offered_per_s"]
        assert inproc["calls"] > 0 and inproc["errors"] == {} and inproc["node_cpu_s"] > 0
    if basis["node_phase"] == "inproc":
        # The same routers again with their size cache on: the node figure of the plan that runs with it.
        cached = result["simulation"]["phases"]["inproc_cached"]
        assert cached["routers"] == inproc["routers"] and cached["calls"] > 0 and cached["errors"] == {}
        per_call = cached["node_cpu_s"] / cached["calls"]
        assert result["capacity_cached"]["measured"]["node_cpu_per_call"] == pytest.approx(per_call)
    bare_plan = result["capacity_bare"]  # the same plan for a bare sorted-set design, on the same run's figures
    assert bare_plan["primary_nodes"] >= 1 and bare_plan["router_cores"] >= 1
    assert bare_plan["peak_calls_per_s"] == result["capacity"]["peak_calls_per_s"]
    assert result["wall_seconds"] > 0 and any(g["goal"].startswith("whole run") for g in goals)
    run = result["simulation"]["run"]
    assert run["errors"] == {} and set(run["kinds"]) == {"update", "rank", "top", "around"}
    assert run["timeline"] and all(p["items_per_s"] >= 0 for p in run["timeline"])
    shard_members = sum(s["members"] for s in result["shard_balance"])
    assert shard_members >= max(profile.memory_at)  # preloaded members plus the new players who arrived
    plan_ = result["capacity"]
    assert plan_["router_cores"] >= 1 and plan_["measured"]["size_read_cpu"] > 0  # the run measured a size read
    if plan_["closes"]:
        assert plan_["primary_nodes"] >= 1
    else:  # the size reads of counts asking every node leave no room: the plan says what it would take
        assert plan_["primary_nodes"] is None and plan_["count_round_to_close"] >= 2
    assert plan_["peak_calls_per_s"]["update"] == round(TrafficModel().peak_rates()["update"])

    report = (out / "report.md").read_text()
    for heading in (
        "## Goals",
        "## Node CPU per call",
        "## Shard-count series",
        "## Capacity plan",
        "Assumptions:",
        "## Throughput",
        "## Memory per member",
        "## Traffic simulation",
    ):
        assert heading in report
    assert "| capacity plan | rankshard | bare sorted set |" in report
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, name
    assert "| capacity plan |" in done.stdout and "router cores" in done.stdout


@pytest.mark.timeout(120)
def test_the_direct_batch_baseline_sends_new_writes_every_run(client, control_plane_dsn):
    """The baseline stands for BatchUpdateScores' work: a run that sent an earlier run's request ids again
    would be answered as retries (no writes) and look faster than the router for doing less."""
    from rankshard.cli._direct import direct_batches

    client.create("direct", boundaries=TrafficModel().boundaries(4))
    runs = [direct_batches(control_plane_dsn, "direct", 0.3, 10**6, 1, TrafficModel()) for _ in range(2)]
    for run in runs:
        assert run["updates"] > 0 and run["applied"] == run["updates"], run
