"""The phases of ``rankshard bench``, in order, and the goals judged from them (ratios within one run)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

from ._bench import Bench
from ._capacity import Headroom, Measured, plan
from ._model import Profile
from ._procs import Cluster
from ._storage import (
    CHUNK,
    aof_paused,
    bare_zset_bytes,
    chunk_scores,
    compact_aof,
    fill_bare,
    no_aof_rewrite,
    probe_request_ids,
    raw_baseline,
)

SIM_BOARD = "sim"
LATENCY_LOAD = 0.7
FULL_MEMORY_AT = 5_000_000
"""The size the memory goal is stated at (the default run measures a smaller one; ``--full`` adds this)."""
NODE_CPU_TARGET = 3.0
ROUTER_TARGET = 0.8
SHARD_FLAT_TARGET = 1.2
MEMORY_TARGET = 1.5
BATCH_TARGET = 0.8
WALL_TARGET_S = 240.0


def run_suite(bench: Bench) -> dict[str, Any]:
    """Runs every phase on `bench`'s processes; returns the whole result (JSON-ready)."""
    p = bench.profile
    started = time.time()
    result: dict[str, Any] = {"profile": _profile_json(p), "started": started}
    assert bench.cluster is not None, "the bench starts its cluster first"
    result["node_server"] = bench.cluster.node_server()
    boards = {n: f"shards-{n}" for n in p.shard_counts}
    for n, board in boards.items():
        bench.create_board(board, p.model.boundaries(n), p.shard_population)
    bench.create_board(SIM_BOARD, p.model.boundaries(p.sim_shards), max(p.memory_at))
    bench.progress(f"preloading {len(boards)} boards of {p.shard_population:,} members ({p.shard_counts} shards)")
    for board in boards.values():
        _load(bench, board, 0, p.shard_population)
    result["memory"], result["preload"] = _memory(bench)
    bench.progress(f"a bare sorted set of the same {p.shard_population:,} members and scores on each node")
    fill_bare([bench.cluster.node(a) for a in bench.cluster.nodes], p.model, bench.seed, p.shard_population)

    rounds = result["rounds"] = _rounds(bench, boards)
    once = result["once"] = _once(bench, boards)
    few, many = min(p.shard_counts), max(p.shard_counts)
    # The tables show each series' median measurement; the goals, the median of each round's ratio.
    result["echo"] = {kind: _median(rounds[kind], "echo", "calls_per_server_core") for kind in ("update", "rank")}
    if "echo_batch" in once:
        result["echo"]["batch"] = once["echo_batch"]
    result["shards"] = {str(n): dict(once["shards"].get(str(n), {})) for n in p.shard_counts}
    for kind in ("update", "rank"):
        result["shards"][str(few)][kind] = _median(rounds[kind], "few", "node_us_per_item")
        result["shards"][str(many)][kind] = _median(rounds[kind], "many", "node_us_per_item")
    result["shards"][str(few)]["batch"] = _median(rounds["batch"], "few", "node_us_per_item")
    result["bare"] = {
        "update": _median(rounds["batch"], "bare", "node_us_per_item"),
        "rank": _median(rounds["rank"], "bare", "node_us_per_item"),
        "top": once["bare_top"],
        "around": once["bare_around"],
    }
    result["raw"] = {"pipelined": _median(rounds["batch"], "bare", "updates_per_s")}
    if "one_by_one" in once:
        result["raw"]["one_by_one"] = once["one_by_one"]
    if all("direct" in r for r in rounds["batch"]):
        result["raw"]["direct"] = {**_median(rounds["batch"], "direct", "updates_per_s"), "shards": few}

    if p.extras:
        result["latency"] = _latency(bench, boards[few])
        result["scaling"] = _scaling(bench, boards[few])
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
    result["node_cpu"] = _node_cpu_rows(p, result)
    result["shard_series"] = _shard_series(result)
    result["capacity"], result["capacity_bare"], result["plan_basis"] = _capacity(p, result)
    result["capacity_cached"] = _capacity_cached(p, result)
    result["goals"] = goals(result)
    result["seconds"] = time.time() - started
    return result


def _rounds(bench: Bench, boards: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
    """`rounds` rounds of, back to back for each call kind, its baselines and then rankshard:

    - update: the echo server; UpdateScore (request ids) on the boards with the fewest and the most shards;
    - rank: the echo server, the bare sorted sets' ZREVRANK+ZCARD; GetRank on the same two boards;
    - batch: the bare sorted sets' ZINCRBY+ZREVRANK pipelined in 100s (the raw redis-py baseline, from one
      process); BatchUpdateScores(100) with request ids on the fewest shards; with the extras also its node
      operations driven directly (`Bench.measure_direct`).

    Every rankshard and bare phase records the nodes' CPU time, so node CPU per call and its ratio to the
    bare sorted set come from the same round on the same nodes."""
    p = bench.profile
    few, many = min(boards), max(boards)
    pop = p.shard_population
    out: dict[str, list[dict[str, Any]]] = {"update": [], "rank": [], "batch": []}
    for i in range(1, p.rounds + 1):
        bench.progress(
            f"side by side, round {i} of {p.rounds}: UpdateScore, GetRank and BatchUpdateScores(100) beside "
            f"the echo floor and the bare sorted set; {few} and {many} shards"
        )

        def sides(kind: str, counts: tuple[int, ...] = (few, many), in_flight: int | None = None, i: int = i) -> dict:
            return {
                ("few" if n == few else "many"): bench.measure(
                    f"{n} shards {kind} ({i})", "router", boards[n], {kind: 1.0}, population=pop, concurrency=in_flight
                )
                for n in counts
            }

        out["update"].append(
            {"echo": bench.measure(f"echo update ({i})", "echo", "echo", {"update": 1.0}), **sides("update")}
        )
        out["rank"].append(
            {
                "echo": bench.measure(f"echo rank ({i})", "echo", "echo", {"rank": 1.0}),
                "bare": bench.measure_bare("rank", pop, p.batch_in_flight),
                **sides("rank"),
            }
        )
        batch = {"bare": bench.measure_bare("update", pop, p.batch_in_flight)}
        batch.update(sides("batch", (few,), p.batch_in_flight))
        if p.extras and (direct := bench.measure_direct(boards[few], pop)):
            batch["direct"] = direct
        out["batch"].append(batch)
    return out


def _once(bench: Bench, boards: dict[int, str]) -> dict[str, Any]:
    """Single measurements: UpdateScore and GetRank on the boards between the fewest and the most shards,
    GetTop(10) and GetAround(radius) on the fewest with their bare sorted-set counterparts; with the extras
    the echo server's batch floor and raw redis-py one command at a time."""
    p = bench.profile
    few, many = min(boards), max(boards)
    pop = p.shard_population
    out: dict[str, Any] = {"shards": {}}
    bench.progress(
        f"GetTop(10) and GetAround({p.around_radius}) beside the bare sorted set; UpdateScore and GetRank on "
        "the other shard counts"
    )
    for kind in ("top", "around"):
        out[kind] = bench.measure(f"{few} shards {kind}", "router", boards[few], {kind: 1.0}, population=pop)
        out[f"bare_{kind}"] = bench.measure_bare(kind, pop, p.batch_in_flight)
    for n, board in boards.items():
        if n not in (few, many):
            out["shards"][str(n)] = {
                kind: bench.measure(f"{n} shards {kind}", "router", board, {kind: 1.0}, population=pop)
                for kind in ("update", "rank")
            }
    if p.extras:
        bench.progress("the gRPC floor for batches, raw storage one command at a time")
        out["echo_batch"] = bench.measure("echo batch", "echo", "echo", {"batch": 1.0}, concurrency=p.batch_in_flight)
        assert bench.cluster is not None
        out["one_by_one"] = bench.run_in_pool(raw_baseline, [(bench.cluster.nodes[0], p.phase_seconds, False)])[0]
    return out


def _median(rounds: list[dict[str, Any]], side: str, figure: str) -> dict[str, Any]:
    """The measurement of `side` whose `figure` is the median over the rounds."""
    return sorted((r[side] for r in rounds), key=lambda m: m[figure])[len(rounds) // 2]


def _profile_json(p: Profile) -> dict[str, Any]:
    out = asdict(p)
    out["peak_rates"] = {k: round(v) for k, v in p.model.peak_rates().items()}
    return out


SIZE_CACHE_S = 1.0
"""The size cache the plan's cached column runs its routers with (`--size-cache-ms 1000`): a rank can miss other
routers' writes of the last second, about what a leaderboard screen's refresh already shows."""

DEDUP_PROBE = 50_000
"""Members sent a request id at the end of the memory phase, to measure what a request-id record costs (a
tenth of the default size: the records' hashes are laid out for the board, so the cost per record holds)."""


def _load(bench: Bench, board: str, start: int, stop: int, cluster: Cluster | None = None) -> float:
    """Loads members start..stop-1 (CHUNK-aligned) with ``rankshard leaderboards import`` (into `cluster`'s board,
    default the bench's own)."""
    p = bench.profile
    return bench.import_members(
        board,
        (f"{u},{s}\n" for at in range(start, stop, CHUNK) for u, s in chunk_scores(p.model, bench.seed, at)),
        cluster,
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
    router adds to a call's latency. `rounds` interleaved pairs of probes, each half a phase long: a p99
    is a hundredth of the calls, and one stall of the machine moves it in one probe, not in the median
    of their ratios. `echo` and `router` are the pair whose ratio is that median."""
    out = {}
    p = bench.profile
    pop = p.shard_population
    seconds = p.phase_seconds / 2
    for kind in ("update", "rank"):
        bench.progress(
            f"latency of {kind} calls: the router's rate now, then {p.rounds} times 70% of it open loop, "
            "echo then router"
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
            for i in range(1, p.rounds + 1)
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


PUSH_CAP = 0.8
"""The simulation and the node phase offer at most this share of the mix's closed-loop capacity: nearer to it, a
moment of noise on a shared machine builds a queue, and a backlogged router batches more and costs less per call."""


def _busy(m: dict[str, Any], nodes: int) -> dict[str, float]:
    """The router's and the nodes' busy shares during open-loop phase `m` (CPU seconds / wall seconds;
    the nodes' as their mean, and the busiest)."""
    routers = max(m["server_processes"], 1)
    by_node = m.get("node_cpu_by_node") or [m["node_cpu_s"] / nodes] * nodes
    return {
        "router": m["server_cpu_s"] / m["seconds"] / routers,
        "nodes": sum(by_node) / m["seconds"] / max(len(by_node), 1),
        "busiest_node": max(by_node) / m["seconds"],
    }


def _simulation(bench: Bench) -> dict[str, Any]:
    """The model's call mix on the big board, open loop, at the utilisations the capacity plan assumes:

    1. capacity: closed loop, the mix's rate here;
    2. calibration: open loop at half of it, for the router's CPU per call at that load;
    3. the run: `duration` seconds open loop at the rate that keeps the router `router_utilisation` busy
       by that figure, new players arriving (the plan's router figure, and the timeline plots);
    4. nodes: when the run left the nodes under the plan's `node_utilisation`, open loop at the rate that
       would bring them there by the run's node CPU per call, at most PUSH_CAP of capacity (the router
       saturates first on a small machine; the figure then says how busy the nodes got);
    5. echo: the echo server on the same mix at the run's rate (the bare design's routers).
    The plan takes its node figure from whichever of 3 and 4 had the nodes nearer `node_utilisation`."""
    p, head = bench.profile, Headroom()
    mix = p.model.mix()
    pop = max(p.memory_at)
    new = p.model.new_player_share / p.model.games_per_user_per_day
    nodes = p.nodes

    def run(name: str, rate: float, seconds: float, target: str = "router") -> dict[str, Any]:
        board = SIM_BOARD if target == "router" else "echo"
        m = bench.measure(name, target, board, mix, rate=rate, seconds=seconds, population=pop, new_player_share=new)
        return {**m, "busy": _busy(m, nodes)}

    bench.progress("traffic mix: capacity here (closed loop), then half of it open loop (the router's CPU per call)")
    capacity = bench.measure("mix capacity", "router", SIM_BOARD, mix, population=pop, new_player_share=new)
    capacity["busy"] = _busy(capacity, nodes)
    half = run("mix calibration", 0.5 * capacity["calls_per_s"], p.phase_seconds)
    rate = _rate_for(head.router_utilisation, half, capacity)
    bench.progress(
        f"traffic simulation: {p.duration:.0f} s open loop at {rate:,.0f} calls/s "
        f"(the router {head.router_utilisation:.0%} busy by the calibration)"
    )
    main = run("simulation", rate, p.duration)
    phases = {"capacity": capacity, "calibration": half}
    node_phase = "run"
    node_per_call = main["node_cpu_s"] / max(main["calls"], 1)
    if main["busy"]["nodes"] < head.node_utilisation - 0.1 and node_per_call:
        push_rate = min(head.node_utilisation * nodes / node_per_call, PUSH_CAP * capacity["calls_per_s"])
        if push_rate > rate * 1.05:
            bench.progress(
                f"nodes {main['busy']['nodes']:.0%} busy in the simulation: open loop at {push_rate:,.0f} calls/s "
                f"toward {head.node_utilisation:.0%}"
            )
            push = phases["nodes"] = run("mix, nodes busier", push_rate, max(p.phase_seconds, p.duration / 2))
            if abs(push["busy"]["nodes"] - head.node_utilisation) < abs(main["busy"]["nodes"] - head.node_utilisation):
                node_phase = "nodes"
    best = main if node_phase == "run" else phases["nodes"]
    if best["busy"]["nodes"] < head.node_utilisation - 0.1 and bench.routers is not None:
        inproc = phases["inproc"] = _routers_in_process(bench, best, main, mix, pop, new)
        if inproc["kept_up"] and _nearer(inproc, best, head.node_utilisation):
            node_phase, best = "inproc", inproc
        if node_phase == "inproc" and best["busy"]["nodes"] < head.node_utilisation - 0.1:
            one = phases["inproc_one"] = _one_node(bench, inproc, main, mix, new)
            if one["kept_up"] and _nearer(one, best, head.node_utilisation):
                node_phase = "inproc_one"
        if node_phase == "inproc":
            phases["inproc_cached"] = _in_process_cached(bench, inproc, mix, pop, new)
    bench.progress("the echo server on the same mix at the same rate (the bare design's routers)")
    phases["echo"] = run("echo mix", rate, max(p.phase_seconds, p.duration / 3), target="echo")
    full = sum(p.model.peak_rates().values())
    return {
        "mix": mix,
        "capacity": capacity,
        "run": main,
        "phases": phases,
        "node_phase": node_phase,
        "scale": rate / full,
    }


ONE_NODE_MEMBERS = 200_000
"""Members of the one-node cluster's board (`_one_node`): a node's work per call grows with the log of a shard's
size, and a fill of the simulation board's size would add a minute to the run."""


def _nearer(m: dict[str, Any], than: dict[str, Any], busy: float) -> bool:
    """Whether phase `m` had the nodes nearer `busy` than phase `than` had them."""
    return bool(abs(m["busy"]["nodes"] - busy) < abs(than["busy"]["nodes"] - busy))


def _one_node(
    bench: Bench, inproc: dict[str, Any], main: dict[str, Any], mix: dict[str, float], new: float
) -> dict[str, Any]:
    """The phase of routers in process `inproc` again, the same routers at the same rate from the same load
    generators (so they batch as it did), on a cluster of one node holding a whole board (its index slots and every
    shard, cut as the simulation board's): on 2 cores the load generators run out of CPU before two nodes get as
    busy as the plan assumes, and one node carries all of a call's node work, its index entry, shard writes and
    counts, so the same load keeps it about twice as busy. A plan taking its node figure from here counts that one
    node as measured (a count meets every other node of a bigger board with a size read). Kept up: answered within
    INPROC_LAG of `inproc`'s median, as `inproc` was of the simulation's."""
    p = bench.profile
    cluster = bench.one_node()
    members = min(ONE_NODE_MEMBERS, max(p.memory_at))
    bench.create_board(SIM_BOARD, p.model.boundaries(p.sim_shards), members, cluster)
    bench.progress(f"loading {members:,} members into the one node's board")
    _load(bench, SIM_BOARD, 0, members, cluster)
    bench.progress(f"routers in process on the one node: {inproc['routers']} routers, as before")
    m = _again(bench, inproc, "mix, routers in process, one node", mix, members, new, cluster=cluster)
    kept_up = m["latency"]["p50_ms"] <= INPROC_LAG * inproc["latency"]["p50_ms"] and not m["errors"] and not m["shed"]
    return {**m, "busy": _busy(m, 1), "kept_up": kept_up, "members": members}


INPROC_LAG = 2.0
"""A phase of routers in process counts only if its median latency is at most this many times the simulation's: a
load generator short of CPU makes its calls wait, and its routers then batch the backlog, and a node answering bigger
batches spends less per call than at the planned load (the figure would err low)."""
INPROC_TRIES = 3
"""Phases of routers in process at most: after one that fell behind, one with half the routers; after one that kept up
short of the plan's utilisation, one with as many more as would bring the nodes there (at most halfway to a number
that fell behind)."""


def _routers_in_process(
    bench: Bench,
    best: dict[str, Any],
    main: dict[str, Any],
    mix: dict[str, float],
    pop: int,
    new: float,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """The mix open loop through routers served inside the load generators (no gRPC: the router processes' CPU
    goes to the nodes), each offered the simulation `main`'s rate, the rate at which it kept a router process at
    the plan's utilisation, so each batches as a planned router does; as many routers as bring the nodes to the
    plan's utilisation by the node CPU per call measured last (`best`'s at first; a whole number per load
    generator), half as many after a phase that fell behind (`INPROC_LAG`). Returns the phase that kept up with the
    nodes nearest the plan's utilisation (else the last), with whether it kept up. On `cluster`'s nodes, default the
    bench's own."""
    p, head = bench.profile, Headroom()
    rate, target, loaders = main["offered_per_s"], head.node_utilisation, p.loaders
    nodes = len(cluster.nodes) if cluster is not None else p.nodes
    node_per_call = best["node_cpu_s"] / max(best["calls"], 1)
    per_loader = max(1, math.ceil(target * nodes / node_per_call / rate / loaders)) if node_per_call else 1
    tried: dict[int, dict[str, Any]] = {}
    for attempt in range(1, INPROC_TRIES + 1):
        routers = per_loader * loaders
        bench.progress(
            f"routers in process, phase {attempt}: {routers} routers in the load generators (no gRPC), "
            f"{rate:,.0f} calls/s each, {routers * rate:,.0f} in all (nodes {best['busy']['nodes']:.0%} busy "
            "through the router)"
        )
        m = bench.measure(
            "mix, routers in process",
            "inproc",
            SIM_BOARD,
            mix,
            rate=routers * rate,
            channels=per_loader,
            population=pop,
            new_player_share=new,
            cluster=cluster,
        )
        kept_up = m["latency"]["p50_ms"] <= INPROC_LAG * main["latency"]["p50_ms"] and not m["errors"] and not m["shed"]
        m = tried[per_loader] = {
            **m,
            "busy": _busy(m, nodes),
            "routers": routers,
            "rate_per_router": rate,
            "kept_up": kept_up,
        }
        if not kept_up:
            nxt = max(1, per_loader // 2)
        elif m["busy"]["nodes"] < target - 0.1 and m["node_cpu_s"]:
            nxt = math.ceil(target * nodes * m["calls"] / m["node_cpu_s"] / rate / loaders)
            behind = [n for n, t in tried.items() if not t["kept_up"]]
            if behind and nxt >= min(behind):  # no more than fell behind before: halfway there
                nxt = (per_loader + min(behind)) // 2
        else:
            break
        if nxt in tried:
            break
        per_loader = nxt
    kept = [t for t in tried.values() if t["kept_up"]]
    chosen = min(kept, key=lambda t: abs(t["busy"]["nodes"] - target)) if kept else m
    tries = [
        {
            "routers": t["routers"],
            "nodes_busy": t["busy"]["nodes"],
            "p50_ms": t["latency"]["p50_ms"],
            "kept_up": t["kept_up"],
        }
        for t in tried.values()
    ]
    return {**chosen, "tries": tries}


def _in_process_cached(
    bench: Bench, inproc: dict[str, Any], mix: dict[str, float], pop: int, new: float
) -> dict[str, Any]:
    """The phase of routers in process that gave the node figure again, its routers' size cache on (SIZE_CACHE_S):
    the node figure of the plan whose routers run with it."""
    bench.progress(f"routers in process again, their size cache on ({SIZE_CACHE_S * 1000:.0f} ms)")
    m = _again(bench, inproc, "mix, routers in process, sizes cached", mix, pop, new, size_cache=SIZE_CACHE_S)
    return {**m, "busy": _busy(m, bench.profile.nodes)}


def _again(
    bench: Bench, inproc: dict[str, Any], name: str, mix: dict[str, float], pop: int, new: float, **given: Any
) -> dict[str, Any]:
    """The phase of routers in process `inproc` run again, the same routers at the same rate from the same load
    generators (so they batch as they did), with `given` (a size cache, another cluster) for `Bench.measure`."""
    routers, rate = inproc["routers"], inproc["rate_per_router"]
    m = bench.measure(
        name,
        "inproc",
        SIM_BOARD,
        mix,
        rate=routers * rate,
        channels=routers // bench.profile.loaders,
        population=pop,
        new_player_share=new,
        **given,
    )
    return {**m, "routers": routers, "rate_per_router": rate}


def _rate_for(busy: float, half: dict[str, Any], capacity: dict[str, Any]) -> float:
    """The offered rate at which the router would be `busy`, between two measured points: the calibration at
    half of capacity and the closed-loop capacity itself (a router's CPU per call falls as load rises: more
    calls share each batch and each wake-up, so busy share is not proportional to rate). At most PUSH_CAP
    of capacity; past the calibration's share, in proportion to it."""
    low_rate, low = half["offered_per_s"], half["busy"]["router"]
    high_rate, high = capacity["calls_per_s"], capacity["busy"]["router"]
    cap = PUSH_CAP * high_rate
    if low >= busy or high <= low:
        return min(low_rate * busy / low, cap) if low else low_rate
    return min(low_rate + (busy - low) * (high_rate - low_rate) / (high - low), cap)


def _capacity(p: Profile, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The plan for rankshard from the open-loop mix phases, and the same plan for a bare sorted-set design
    from the bare baselines; with what each figure was measured on."""
    sim = result["simulation"]
    run = sim["run"]
    node_m = run if sim["node_phase"] == "run" else sim["phases"][sim["node_phase"]]
    batch = result["shards"][str(min(p.shard_counts))]["batch"]
    memory = result["memory"][-1]
    size_read, size_busy = _size_read(result["once"]["top"])
    ours = Measured(
        router_cpu_per_call=run["server_cpu_s"] / max(run["calls"], 1),
        node_cpu_per_call=node_m["node_cpu_s"] / max(node_m["calls"], 1),
        bytes_per_member=memory["all_in_per_member"],
        router_cpu_per_batched_update=batch["server_cpu_s"] / max(batch["items"], 1),
        size_read_cpu=size_read,
        measured_nodes=1 if sim["node_phase"] == "inproc_one" else p.nodes,
    )
    echo = sim["phases"]["echo"]
    mix = sim["mix"]
    bare_node = sum(share * result["bare"][kind]["node_us_per_item"] / 1e6 for kind, share in mix.items())
    bare = Measured(
        router_cpu_per_call=echo["server_cpu_s"] / max(echo["calls"], 1),
        node_cpu_per_call=bare_node,
        bytes_per_member=memory["bare_zset_per_member"],
    )
    basis = {
        "router_busy": run["busy"]["router"],
        "router_phase_rate": run["offered_per_s"],
        "node_busy": node_m["busy"]["nodes"],
        "busiest_node": node_m["busy"]["busiest_node"],
        "node_phase": sim["node_phase"],
        "node_phase_rate": node_m["offered_per_s"],
        "memory_members": memory["members"],
        "bare_node_busy": {kind: m["node_cpu_s"] / m["seconds"] / p.nodes for kind, m in result["bare"].items()},
        "echo_busy": echo["busy"]["router"],
        "node_reads_per_call": node_m.get("node_reads_per_item"),
        "size_read_node_busy": size_busy,
        "bare_node_reads_per_call": sum(
            share * result["bare"][kind].get("node_reads_per_item", 0.0) for kind, share in mix.items()
        ),
    }
    return plan(p.model, ours), plan(p.model, bare), basis


def _capacity_cached(p: Profile, result: dict[str, Any]) -> dict[str, Any]:
    """The plan with the routers' size cache on: the node figure from the phase of routers in process run again with
    it, when there was one (else the plan's own node figure)."""
    measured = result["capacity"]["measured"]
    cached = result["simulation"]["phases"].get("inproc_cached")
    if cached is not None:
        measured = {**measured, "node_cpu_per_call": cached["node_cpu_s"] / max(cached["calls"], 1)}
    return plan(p.model, Measured(**measured), size_cache_s=SIZE_CACHE_S)


def _size_read(top: dict[str, Any]) -> tuple[float, float]:
    """Node CPU seconds per round trip of a count that reads nothing but sizes, and how busy that node was: from
    the GetTop phase, where every batch's count asks each node once and one node reads the page too, the node
    spending the least per round trip (the other, on the board with the fewest shards)."""
    per_trip = [
        (cpu / reads, cpu / top["seconds"])
        for cpu, reads in zip(top["node_cpu_by_node"], top["node_reads_by_node"], strict=True)
        if reads
    ]
    return min(per_trip) if per_trip else (0.0, 0.0)


def _node_cpu_rows(p: Profile, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Node CPU per call of each RPC beside the bare sorted set's work for the same answer, on the same nodes
    (the board with the fewest shards, the same members): the rankshard and bare measurements shown are each
    series' median, the ratio the median of each round's ratio (top and around: one round)."""
    rounds, once, few = result["rounds"], result["once"], str(min(p.shard_counts))

    def per_round(ours: list[dict[str, Any]], bare: list[dict[str, Any]]) -> tuple[float, str]:
        return _median_ratio(
            [_ratio(o["node_us_per_item"], b["node_us_per_item"]) for o, b in zip(ours, bare, strict=True)]
        )

    bare_update = [r["bare"] for r in rounds["batch"]]
    rows = [
        (
            f"BatchUpdateScores(100) with request ids, {p.batch_in_flight} in flight (per update)",
            result["shards"][few]["batch"],
            f"ZINCRBY+ZREVRANK pipelined in 100s, {p.batch_in_flight} pipelines in flight (per update)",
            result["bare"]["update"],
            per_round([r["few"] for r in rounds["batch"]], bare_update),
        ),
        (
            f"UpdateScore with request ids, {p.in_flight} in flight",
            result["shards"][few]["update"],
            "the same (per update)",
            result["bare"]["update"],
            per_round([r["few"] for r in rounds["update"]], bare_update),
        ),
        (
            f"GetRank, {p.in_flight} in flight",
            result["shards"][few]["rank"],
            f"ZREVRANK+ZCARD pipelined in 100s, {p.batch_in_flight} pipelines in flight",
            result["bare"]["rank"],
            per_round([r["few"] for r in rounds["rank"]], [r["bare"] for r in rounds["rank"]]),
        ),
        (
            f"GetTop(10), {p.in_flight} in flight",
            once["top"],
            f"ZREVRANGE 0 9 WITHSCORES + ZCARD pipelined in 100s, {p.batch_in_flight} in flight",
            result["bare"]["top"],
            (_ratio(once["top"]["node_us_per_item"], once["bare_top"]["node_us_per_item"]), "one round"),
        ),
        (
            f"GetAround({p.around_radius}), {p.in_flight} in flight",
            once["around"],
            f"ZREVRANK, then ZREVRANGE ±{p.around_radius} WITHSCORES + ZCARD, each pipelined in 100s, "
            f"{p.batch_in_flight} in flight",
            result["bare"]["around"],
            (_ratio(once["around"]["node_us_per_item"], once["bare_around"]["node_us_per_item"]), "one round"),
        ),
    ]
    out = []
    for call, ours, bare_call, bare, (ratio, spread) in rows:
        out.append(
            {
                "call": call,
                "node_us": ours["node_us_per_item"],
                "per_s": ours["items_per_s"],
                "node_busy": ours["node_cpu_s"] / ours["seconds"] / p.nodes,
                "node_reads": ours.get("node_reads_per_item"),
                "bare_call": bare_call,
                "bare_node_us": bare["node_us_per_item"],
                "bare_per_s": bare["items_per_s"],
                "bare_node_busy": bare["node_cpu_s"] / bare["seconds"] / p.nodes,
                "bare_node_reads": bare.get("node_reads_per_item"),
                "ratio": ratio,
                "spread": spread,
            }
        )
    return out


def _shard_series(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per shard count: node CPU per GetRank and per UpdateScore and their rates, and each against the fewest
    shards (the fewest and the most: each series' median; the others: one measurement)."""
    by_count = sorted(result["shards"].items(), key=lambda kv: int(kv[0]))
    first = by_count[0][1]
    return [
        {
            "shards": int(n),
            **{
                f"{kind}_{figure}": m[kind][key]
                for kind in ("rank", "update")
                for figure, key in (("node_us", "node_us_per_item"), ("per_s", "items_per_s"))
            },
            **{
                f"{kind}_node_vs_fewest": _ratio(m[kind]["node_us_per_item"], first[kind]["node_us_per_item"])
                for kind in ("rank", "update")
            },
        }
        for n, m in by_count
    ]


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _median_ratio(values: list[float]) -> tuple[float, str]:
    """The median, and the values it is the median of (for the goal's label)."""
    if len(values) == 1:
        return values[0], "one round"
    return sorted(values)[len(values) // 2], f"median of {len(values)} rounds: " + ", ".join(f"{v:.2f}" for v in values)


def _row(goal: str, value: float, target: str, met: bool | None) -> dict[str, Any]:
    """One goal; `met` None: a figure reported beside the goals, with no target of its own."""
    return {"goal": goal, "value": value, "target": target, "met": met}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the benchmark as measured/baseline ratio, its target, and whether it was met."""
    p = result["profile"]
    rounds = result["rounds"]
    counts = sorted(map(int, result["shards"]))
    few, many = counts[0], counts[-1]
    rows = []

    r, spread = _median_ratio(
        [_ratio(x["few"]["node_us_per_item"], x["bare"]["node_us_per_item"]) for x in rounds["batch"]]
    )
    rows.append(
        _row(
            f"node CPU per update, BatchUpdateScores(100) with request ids ({p['batch_in_flight']} in flight) / "
            f"bare sorted set's ZINCRBY+ZREVRANK pipelined in 100s ({spread})",
            r,
            f"<= {NODE_CPU_TARGET:.1f}",
            r <= NODE_CPU_TARGET,
        )
    )
    r, spread = _median_ratio(
        [_ratio(x["few"]["node_us_per_item"], x["bare"]["node_us_per_item"]) for x in rounds["rank"]]
    )
    rows.append(
        _row(
            f"node CPU per GetRank ({p['in_flight']} in flight) / bare ZREVRANK+ZCARD pipelined in 100s ({spread})",
            r,
            f"<= {NODE_CPU_TARGET:.1f}",
            r <= NODE_CPU_TARGET,
        )
    )
    r, spread = _median_ratio(
        [
            _ratio(u["few"]["node_us_per_item"], b["bare"]["node_us_per_item"])
            for u, b in zip(rounds["update"], rounds["batch"], strict=True)
        ]
    )
    rows.append(
        _row(
            f"node CPU per unary UpdateScore with request ids ({p['in_flight']} in flight) / bare "
            f"ZINCRBY+ZREVRANK pipelined in 100s ({spread})",
            r,
            "reported",
            None,
        )
    )
    once = result["once"]
    r = _ratio(once["around"]["node_us_per_item"], once["bare_around"]["node_us_per_item"])
    rows.append(
        _row(
            f"node CPU per GetAround({p['around_radius']}) / bare ZREVRANK, then ZREVRANGE+ZCARD, pipelined in 100s "
            "(one round)",
            r,
            "reported",
            None,
        )
    )
    b, spread = _median_ratio([_ratio(x["few"]["items_per_s"], x["bare"]["updates_per_s"]) for x in rounds["batch"]])
    rows.append(
        _row(
            f"BatchUpdateScores(100) updates/s / raw pipelined redis-py on a bare sorted set, one process ({spread})",
            b,
            f">= {BATCH_TARGET:.2f}",
            b >= BATCH_TARGET,
        )
    )
    for kind, rpc in (("update", "UpdateScore"), ("rank", "GetRank")):
        r, spread = _median_ratio(
            [_ratio(x["few"]["calls_per_server_core"], x["echo"]["calls_per_server_core"]) for x in rounds[kind]]
        )
        rows.append(
            _row(
                f"{rpc} calls per router core / echo per core, {p['in_flight']} in flight ({spread})",
                r,
                f">= {ROUTER_TARGET:.2f}",
                r >= ROUTER_TARGET,
            )
        )
    for kind, rpc in (("rank", "GetRank"), ("update", "UpdateScore")):
        r, spread = _median_ratio(
            [_ratio(x["many"]["node_us_per_item"], x["few"]["node_us_per_item"]) for x in rounds[kind]]
        )
        rows.append(
            _row(
                f"node CPU per {rpc}, {many} shards / {few} shards ({spread})",
                r,
                f"<= {SHARD_FLAT_TARGET:.1f}",
                r <= SHARD_FLAT_TARGET,
            )
        )
    for kind in ("update", "rank"):
        r, spread = _median_ratio([_ratio(x["many"]["items_per_s"], x["few"]["items_per_s"]) for x in rounds[kind]])
        rows.append(_row(f"{kind} throughput, {many} shards / {few} ({spread})", r, "0.90-1.10", 0.9 <= r <= 1.1))
    measured_full = any(m["members"] >= FULL_MEMORY_AT for m in result["memory"])
    for m in result["memory"]:
        note = (
            ""
            if m["members"] >= FULL_MEMORY_AT
            else f" (the goal's size is {FULL_MEMORY_AT:,}{'' if measured_full else ': --full'})"
        )
        rows.append(
            _row(
                f"memory all in / bare sorted set at {m['members']:,} members{note}",
                m["ratio_to_bare"],
                f"<= {MEMORY_TARGET:.1f}",
                m["ratio_to_bare"] <= MEMORY_TARGET,
            )
        )
    basis, head = result["plan_basis"], result["capacity"]["headroom"]
    rows.append(
        _row(
            "capacity plan: router busy while its router figure was measured (open loop; plan assumes "
            f"{head['router_utilisation']:.0%})",
            basis["router_busy"],
            f"{head['router_utilisation'] - 0.1:.2f}-{head['router_utilisation'] + 0.1:.2f}",
            abs(basis["router_busy"] - head["router_utilisation"]) <= 0.1,
        )
    )
    rows.append(
        _row(
            "capacity plan: nodes busy (mean of the nodes) while its node figure was measured (open loop; plan "
            f"assumes {head['node_utilisation']:.0%})",
            basis["node_busy"],
            f"{head['node_utilisation'] - 0.1:.2f}-{head['node_utilisation'] + 0.1:.2f}",
            abs(basis["node_busy"] - head["node_utilisation"]) <= 0.1,
        )
    )
    if "latency" in result:
        lat = result["latency"]
        for kind, rpc in (("update", "UpdateScore"), ("rank", "GetRank")):
            p99, spread = _median_ratio([_p99_ratio(pair) for pair in lat[kind]["rounds"]])
            rows.append(
                _row(f"{rpc} p99 / echo p99 at {lat[kind]['rate']:,.0f}/s ({spread})", p99, "<= 2.0", p99 <= 2.0)
            )
    if all("direct" in x for x in rounds["batch"]):
        b, spread = _median_ratio(
            [_ratio(x["few"]["items_per_s"], x["direct"]["updates_per_s"]) for x in rounds["batch"]]
        )
        rows.append(
            _row(
                "BatchUpdateScores(100) updates/s / the same node operations driven directly from one process "
                f"({spread})",
                b,
                ">= 0.80",
                b >= 0.80,
            )
        )
    return rows


def wall_goal(seconds: float, full: bool) -> dict[str, Any]:
    """The run's own wall time, start to stop of every process; a goal of the default run (``--full`` runs
    the long fill and extra rounds, and only reports it)."""
    if full:
        return _row("whole run, wall seconds (--full: reported)", seconds, "reported", None)
    return _row("whole run, wall seconds (default run)", seconds, f"<= {WALL_TARGET_S:.0f}", seconds <= WALL_TARGET_S)
