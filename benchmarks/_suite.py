"""The phases of ``rankshard bench``, in order, and the goals judged from them (ratios within one run)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ._bench import Bench
from ._capacity import Measured, plan
from ._model import Profile
from ._storage import (
    CHUNK,
    aof_paused,
    bare_zset_bytes,
    chunk_scores,
    compact_aof,
    no_aof_rewrite,
    probe_request_ids,
    raw_baseline,
)

SIM_BOARD = "sim"
SIM_LOAD = 0.6
"""The simulation offers this share of the mix's measured capacity: busy, not overloaded."""
LATENCY_LOAD = 0.7


def run_suite(bench: Bench) -> dict[str, Any]:
    """Runs every phase on `bench`'s processes; returns the whole result (JSON-ready)."""
    p = bench.profile
    started = time.time()
    result: dict[str, Any] = {"profile": _profile_json(p), "started": started}
    cmp_boards = {n: f"shards-{n}" for n in p.shard_counts}
    sim_shards = max(p.shard_counts)
    for n, board in cmp_boards.items():
        bench.create_board(board, p.model.boundaries(n), p.shard_population)
    bench.create_board(SIM_BOARD, p.model.boundaries(sim_shards), max(p.memory_at))
    bench.progress(f"preloading {len(cmp_boards)} boards of {p.shard_population:,} members ({p.shard_counts} shards)")
    for board in cmp_boards.values():
        _load(bench, board, 0, p.shard_population)
    result["memory"], result["preload"] = _memory(bench)

    few, many = min(p.shard_counts), max(p.shard_counts)
    rounds = result["rounds"] = _rounds(bench, cmp_boards)
    # The tables show each series' median measurement; the goals, the median of each round's ratio.
    result["echo"] = {kind: _median(rounds[kind], "baseline", "calls_per_server_core") for kind in ("update", "rank")}
    result["shards"] = {
        str(n): {kind: _median(rounds[kind], side, "items_per_s") for kind in rounds}
        for n, side in ((few, "few"), (many, "many"))
    }
    bench.progress("the other shard counts, the gRPC floor for batches, raw storage one command at a time")
    for n, board in cmp_boards.items():
        if n not in (few, many):
            result["shards"][str(n)] = {
                kind: bench.measure(f"{n} shards {kind}", "router", board, {kind: 1.0}, population=p.shard_population)
                for kind in ("update", "rank", "batch")
            }
    result["echo"]["batch"] = bench.measure("echo batch", "echo", "echo", {"batch": 1.0})
    assert bench.cluster is not None, "the bench starts its cluster first"
    node = bench.cluster.nodes[0]
    result["raw"] = {
        "one_by_one": bench.run_in_pool(raw_baseline, [(node, p.phase_seconds, False)])[0],
        "pipelined": _median(rounds["batch"], "baseline", "updates_per_s"),
    }
    if all("direct" in r for r in rounds["batch"]):
        result["raw"]["direct"] = {**_median(rounds["batch"], "direct", "updates_per_s"), "shards": many}

    result["latency"] = _latency(bench, cmp_boards[many])
    result["scaling"] = _scaling(bench, cmp_boards[max(p.shard_counts)])
    result["simulation"] = _simulation(bench)
    shard_map = bench.shard_map(SIM_BOARD)
    result["shard_balance"] = [
        {
            "id": s.id,
            "node": s.node,
            "members": s.members,
            "lower": s.lower if s.HasField("lower") else None,
            "upper": s.upper if s.HasField("upper") else None,
        }
        for s in shard_map.shards
    ]
    result["capacity"] = _capacity(p, result)
    result["goals"] = goals(result)
    result["seconds"] = time.time() - started
    return result


ROUNDS = 3
"""Interleaved rounds behind the throughput goals, each their median ratio: a moment of noise on this
shared machine then moves one round, not the figure."""


def _rounds(bench: Bench, boards: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
    """ROUNDS rounds of, back to back for each call kind: its baseline (the echo server for UpdateScore and
    GetRank, raw pipelined redis-py for BatchUpdateScores(100)), then rankshard on the boards with the
    fewest and the most shards; for batches then also their node operations on the board with the most
    shards, driven directly (`Bench.measure_direct`)."""
    p = bench.profile
    few, many = min(boards), max(boards)
    assert bench.cluster is not None, "the bench starts its cluster first"
    node = bench.cluster.nodes[0]
    out: dict[str, list[dict[str, Any]]] = {"update": [], "rank": [], "batch": []}
    for i in range(1, ROUNDS + 1):
        bench.progress(
            f"side by side, round {i} of {ROUNDS}: baseline, {few} shard(s), {many} shards; "
            "UpdateScore, GetRank, BatchUpdateScores(100)"
        )
        for kind, rounds in out.items():
            if kind == "batch":
                base = bench.run_in_pool(raw_baseline, [(node, p.phase_seconds, True)])[0]
            else:
                base = bench.measure(f"echo {kind} ({i})", "echo", "echo", {kind: 1.0})
            sides = {
                side: bench.measure(
                    f"{n} shards {kind} ({i})", "router", boards[n], {kind: 1.0}, population=p.shard_population
                )
                for side, n in (("few", few), ("many", many))
            }
            if kind == "batch" and (direct := bench.measure_direct(boards[many], p.shard_population)):
                sides["direct"] = direct
            rounds.append({"baseline": base, **sides})
    return out


def _median(rounds: list[dict[str, Any]], side: str, figure: str) -> dict[str, Any]:
    """The measurement of `side` whose `figure` is the median over the rounds."""
    return sorted((r[side] for r in rounds), key=lambda m: m[figure])[len(rounds) // 2]


def _profile_json(p: Profile) -> dict[str, Any]:
    out = asdict(p)
    out["peak_rates"] = {k: round(v) for k, v in p.model.peak_rates().items()}
    return out


DEDUP_PROBE = 100_000
"""Members sent a request id at the end of the memory phase, to measure what a request-id record costs."""


def _load(bench: Bench, board: str, start: int, stop: int) -> float:
    """Loads members start..stop-1 (CHUNK-aligned) with ``rankshard leaderboards import``."""
    p = bench.profile
    return bench.import_members(
        board, (f"{u},{s}\n" for at in range(start, stop, CHUNK) for u, s in chunk_scores(p.model, bench.seed, at))
    )


def _probe(bench: Bench, board: str, stop: int) -> None:
    """Members 0..stop-1 (CHUNK-aligned) each get one request-id record, from every load generator."""
    p = bench.profile
    chunks = list(range(0, stop, CHUNK))
    shares = [chunks[i :: p.loaders] for i in range(p.loaders)]
    bench.run_in_pool(probe_request_ids, [(bench.router_address, board, bench.seed, s) for s in shares if s])


def _memory(bench: Bench) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Node memory per member of the simulation board at each of the profile's sizes, against a bare
    sorted set of the same members and scores; then what one request-id record costs per member.

    All in = index + shard + version registers, plus request-id records for the members active in the
    last hour (the model's `active_hour_share`: records older than an hour are gone). The first size is
    loaded as deployed (its rate is the import figure); the rest is a fill, with the nodes' append-only
    files paused. No automatic AOF rewrite runs in between: a load triggers several, each a child
    process copying the whole dataset, and one compaction at the end does their work."""
    p, cluster = bench.profile, bench.cluster
    assert cluster is not None
    nodes = [cluster.node(a) for a in cluster.nodes]
    loaded, rows, imported = 0, [], {}
    with no_aof_rewrite(nodes):
        base_used, base_rss = cluster.used_memory(), cluster.rss()
        for target in sorted(p.memory_at):
            target = -(-target // CHUNK) * CHUNK
            if not loaded:
                bench.progress(f"loading board {SIM_BOARD!r} to {target:,} members (rankshard leaderboards import)")
                seconds = _load(bench, SIM_BOARD, 0, target)
                imported = {"members": target, "seconds": seconds, "members_per_s": target / seconds}
            else:
                bench.progress(
                    f"filling board {SIM_BOARD!r} to {target:,} members (the same import, append-only files paused)"
                )
                with aof_paused(nodes):
                    _load(bench, SIM_BOARD, loaded, target)
            loaded = target
            used, rss = cluster.used_memory() - base_used, cluster.rss() - base_rss
            bare = bare_zset_bytes(nodes, SIM_BOARD)
            rows.append(
                {
                    "members": target,
                    "stored_bytes": used,
                    "stored_per_member": used / target,
                    "rss_per_member": rss / target,
                    "bare_zset_per_member": bare["used_memory"] / target,
                    "bare_zset_rss_per_member": bare["rss"] / target,
                }
            )
        probed = min(DEDUP_PROBE, loaded)
        bench.progress(f"request-id records: a zero update with a request id for {probed:,} members")
        before = cluster.used_memory()
        _probe(bench, SIM_BOARD, probed)
        record = (cluster.used_memory() - before) / probed
    share = p.model.active_hour_share
    for row in rows:
        row["request_id_record_bytes"] = record
        row["all_in_per_member"] = row["stored_per_member"] + share * record
        row["every_member_active_per_member"] = row["stored_per_member"] + record
        row["ratio_to_bare"] = row["all_in_per_member"] / row["bare_zset_per_member"]
    bench.progress("rewriting the nodes' append-only files (so that no rewrite runs during a measurement)")
    compact_aof(nodes)
    return rows, {**imported, "filled_to": loaded, "laid_out_for": max(p.memory_at), "active_hour_share": share}


def _latency(bench: Bench, board: str) -> dict[str, Any]:
    """p99 of echo and router at the same open-loop load: 70% of the router's closed-loop rate measured
    right before (busy, not overloaded: a rate from minutes earlier can be past what a slower moment of
    this shared machine serves, and then the probe measures a queue), so the difference is what the
    router adds to a call's latency. ROUNDS interleaved pairs of probes, each half a phase long: a p99
    is a hundredth of the calls, and one stall of the machine moves it in one probe, not in the median
    of their ratios. `echo` and `router` are the pair whose ratio is that median."""
    out = {}
    pop = bench.profile.shard_population
    seconds = bench.profile.phase_seconds / 2
    for kind in ("update", "rank"):
        bench.progress(
            f"latency of {kind} calls: the router's rate now, then {ROUNDS} times 70% of it open loop, echo then router"
        )
        capacity = bench.measure(f"router {kind} capacity", "router", board, {kind: 1.0}, population=pop)
        rate = LATENCY_LOAD * capacity["calls_per_s"]
        pairs = [
            {
                "echo": bench.measure(
                    f"echo {kind} open ({i})", "echo", "echo", {kind: 1.0}, rate=rate, seconds=seconds
                ),
                "router": bench.measure(
                    f"router {kind} open ({i})",
                    "router",
                    board,
                    {kind: 1.0},
                    rate=rate,
                    seconds=seconds,
                    population=pop,
                ),
            }
            for i in range(1, ROUNDS + 1)
        ]
        median = sorted(pairs, key=_p99_ratio)[len(pairs) // 2]
        out[kind] = {"rate": rate, "capacity": capacity, "rounds": pairs, **median}
    return out


def _p99_ratio(pair: dict[str, Any]) -> float:
    return _ratio(pair["router"]["latency"]["p99_ms"], pair["echo"]["latency"]["p99_ms"])


def _scaling(bench: Bench, board: str) -> list[dict[str, Any]]:
    """UpdateScore throughput with 1..N router processes sharing one port (SO_REUSEPORT)."""
    assert bench.cluster is not None
    rows = []
    for n in bench.profile.router_processes:
        bench.progress(f"{n} router process(es) on one port")
        bench.cluster.scale_routers(n)
        m = bench.measure(
            f"{n} routers update",
            "router",
            board,
            {"update": 1.0},
            channels=4 * n,
            population=bench.profile.shard_population,
        )
        rows.append(
            {
                "routers": n,
                "calls_per_s": m["calls_per_s"],
                "calls_per_router_core": m["calls_per_server_core"],
                "router_cpu_s": m["server_cpu_s"],
                "p99_ms": m["latency"]["p99_ms"],
            }
        )
    bench.cluster.scale_routers(1)
    return rows


def _simulation(bench: Bench) -> dict[str, Any]:
    """The model's call mix on the big board: its capacity here (closed loop), then `duration` seconds
    open loop at SIM_LOAD of that, new players arriving."""
    p = bench.profile
    mix = p.model.mix()
    pop = max(p.memory_at)
    new = p.model.new_player_share / p.model.games_per_user_per_day
    bench.progress("traffic mix: capacity here (closed loop)")
    capacity = bench.measure("mix capacity", "router", SIM_BOARD, mix, population=pop, new_player_share=new)
    rate = SIM_LOAD * capacity["calls_per_s"]
    bench.progress(f"traffic simulation: {p.duration:.0f} s open loop at {rate:,.0f} calls/s")
    run = bench.measure(
        "simulation", "router", SIM_BOARD, mix, rate=rate, seconds=p.duration, population=pop, new_player_share=new
    )
    full = sum(p.model.peak_rates().values())
    return {"mix": mix, "capacity": capacity, "run": run, "scale": rate / full}


def _capacity(p: Profile, result: dict[str, Any]) -> dict[str, Any]:
    run = result["simulation"]["run"]
    batch = result["shards"][str(max(p.shard_counts))]["batch"]
    calls = max(run["calls"], 1)
    measured = Measured(
        router_cpu_per_call=run["server_cpu_s"] / calls,
        node_cpu_per_call=run["node_cpu_s"] / calls,
        bytes_per_member=result["memory"][-1]["all_in_per_member"],
        router_cpu_per_batched_update=batch["server_cpu_s"] / max(batch["items"], 1),
    )
    return plan(p.model, measured)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _median_ratio(values: list[float]) -> tuple[float, str]:
    """The median, and the values it is the median of (for the goal's label)."""
    return sorted(values)[len(values) // 2], f"median of {len(values)} rounds: " + ", ".join(f"{v:.2f}" for v in values)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the benchmark as measured/baseline ratio, its target, and whether it was met."""
    rounds, lat = result["rounds"], result["latency"]
    counts = sorted(map(int, result["shards"]))
    rows = []
    for kind, rpc in (("update", "UpdateScore"), ("rank", "GetRank")):
        r, spread = _median_ratio(
            [_ratio(x["many"]["calls_per_server_core"], x["baseline"]["calls_per_server_core"]) for x in rounds[kind]]
        )
        rows.append(
            {
                "goal": f"{rpc} calls per router core / echo per core ({spread})",
                "value": r,
                "target": ">= 0.70",
                "met": r >= 0.70,
            }
        )
        p99, spread = _median_ratio([_p99_ratio(pair) for pair in lat[kind]["rounds"]])
        rows.append(
            {
                "goal": f"{rpc} p99 / echo p99 at {lat[kind]['rate']:,.0f}/s ({spread})",
                "value": p99,
                "target": "<= 2.0",
                "met": p99 <= 2.0,
            }
        )
    if all("direct" in x for x in rounds["batch"]):
        b, spread = _median_ratio(
            [_ratio(x["many"]["items_per_s"], x["direct"]["updates_per_s"]) for x in rounds["batch"]]
        )
        rows.append(
            {
                "goal": f"BatchUpdateScores(100) updates/s / the same node operations driven directly "
                f"from one process ({spread})",
                "value": b,
                "target": ">= 0.80",
                "met": b >= 0.80,
            }
        )
    b, spread = _median_ratio(
        [_ratio(x["many"]["items_per_s"], x["baseline"]["updates_per_s"]) for x in rounds["batch"]]
    )
    rows.append(
        {
            "goal": f"BatchUpdateScores(100) updates/s / raw pipelined redis-py on a bare sorted set ({spread})",
            "value": b,
            "target": ">= 0.80",
            "met": b >= 0.80,
        }
    )
    for kind in ("update", "rank", "batch"):
        r, spread = _median_ratio([_ratio(x["many"]["items_per_s"], x["few"]["items_per_s"]) for x in rounds[kind]])
        rows.append(
            {
                "goal": f"{kind} throughput, {counts[-1]} shards / {counts[0]} ({spread})",
                "value": r,
                "target": "0.90-1.10",
                "met": 0.9 <= r <= 1.1,
            }
        )
    for m in result["memory"]:
        rows.append(
            {
                "goal": f"memory all in / bare sorted set at {m['members']:,} members",
                "value": m["ratio_to_bare"],
                "target": "<= 2.0",
                "met": m["ratio_to_bare"] <= 2.0,
            }
        )
    return rows
