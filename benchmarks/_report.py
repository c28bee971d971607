"""Writing a run down: ``result.json`` (everything), ``report.md`` (the tables), and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLOTS = ("timeline.png", "latency.png", "shards.png")


def write_report(result: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Writes the JSON result, the markdown report and the plots into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "command": command}
    paths = [out_dir / "result.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(result, indent=1, default=_plain))
    paths[1].write_text(markdown(result))
    from ._plots import plot_all  # matplotlib is slow to import: only when writing plots

    paths += plot_all(result, out_dir)
    return paths


def _plain(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def headline(result: dict[str, Any]) -> str:
    """The goals table: each ratio, its target, met or not ("—": a figure reported beside the goals)."""
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        met = "—" if g["met"] is None else "yes" if g["met"] else "**no**"
        value = f"{g['value']:.0f}" if "seconds" in g["goal"] else f"{g['value']:.2f}"
        lines.append(f"| {g['goal']} | {value} | {g['target']} | {met} |")
    return "\n".join(lines)


def node_cpu_table(result: dict[str, Any]) -> str:
    """Node CPU per call, rankshard beside the bare sorted set on the same nodes in the same run."""
    lines = [
        "| call | node CPU µs per call | calls/s (nodes busy) | node round trips per call "
        "| bare sorted set doing the same | node CPU µs | calls/s (nodes busy) | node round trips per call | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["node_cpu"]:
        lines.append(
            f"| {r['call']} | {r['node_us']:.1f} | {_n(r['per_s'])} ({r['node_busy']:.0%}) "
            f"| {_reads(r.get('node_reads'))} | {r['bare_call']} "
            f"| {r['bare_node_us']:.1f} | {_n(r['bare_per_s'])} ({r['bare_node_busy']:.0%}) "
            f"| {_reads(r.get('bare_node_reads'))} | {r['ratio']:.2f} ({r['spread']}) |"
        )
    return "\n".join(lines)


def _reads(per_call: float | None) -> str:
    """Node round trips per call (read events the nodes processed), or a dash for a run that did not count them."""
    return "—" if per_call is None else f"{per_call:.2f}"


def shard_series_table(result: dict[str, Any]) -> str:
    lines = [
        "| shards | node CPU µs per GetRank | vs the fewest | GetRank calls/s | node CPU µs per UpdateScore "
        "| vs the fewest | UpdateScore calls/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["shard_series"]:
        lines.append(
            f"| {r['shards']} | {r['rank_node_us']:.1f} | {r['rank_node_vs_fewest']:.2f} | {_n(r['rank_per_s'])} "
            f"| {r['update_node_us']:.1f} | {r['update_node_vs_fewest']:.2f} | {_n(r['update_per_s'])} |"
        )
    return "\n".join(lines)


def throughput_table(result: dict[str, Any]) -> str:
    """Side by side: echo floor, rankshard by shard count, the bare sorted set, raw storage."""
    lines = ["| what | calls/s | updates/s | per server core (calls) | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]

    def row(label: str, m: dict[str, Any]) -> None:
        lat = m.get("latency")
        per_core = _n(m["calls_per_server_core"]) if "calls_per_server_core" in m else ""
        ms = f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f}" if lat else " | "
        lines.append(f"| {label} | {_n(m['calls_per_s'])} | {_n(m['items_per_s'])} | {per_core} | {ms} |")

    p = result["profile"]
    names = {"update": "UpdateScore", "rank": "GetRank", "batch": "BatchUpdateScores(100)"}
    for kind, rpc in names.items():
        if kind in result["echo"]:
            row(f"echo {rpc}", result["echo"][kind])
        for n, by_kind in sorted(result["shards"].items(), key=lambda kv: int(kv[0])):
            if kind in by_kind:
                row(f"rankshard {rpc}, {n} shard(s)", by_kind[kind])
        if kind == "rank":
            row("bare sorted set, ZREVRANK+ZCARD (one pipeline per rank, one process)", result["bare"]["rank"])
    few = min(p["shard_counts"])
    row(f"rankshard GetTop(10), {few} shard(s)", result["once"]["top"])
    row(f"rankshard GetAround({p['around_radius']}), {few} shard(s)", result["once"]["around"])
    for name, raw in result["raw"].items():
        if name == "direct":
            label = (
                f"BatchUpdateScores(100)'s node operations, {raw['shards']} shard(s), driven directly from one "
                f"process (no router, no gRPC; node CPU {1e6 * raw['node_cpu_s'] / max(raw['updates'], 1):.0f} "
                "µs/update)"
            )
        else:
            label = f"raw redis-py, {name.replace('_', ' ')} (ZINCRBY+ZREVRANK on a bare sorted set)"
        lines.append(f"| {label} | | {_n(raw['updates_per_s'])} | | | |")
    return "\n".join(lines)


def capacity_table(result: dict[str, Any]) -> str:
    """The plan for rankshard and, beside it, the same plan for a bare sorted-set design."""
    c, b, cached = result["capacity"], result.get("capacity_bare"), result.get("capacity_cached")
    m, h = c["measured"], c["headroom"]
    rates = ", ".join(f"{k} {v:,}" for k, v in c["peak_calls_per_s"].items())

    def both(fmt: Any) -> tuple[str, str]:
        return fmt(c), fmt(b) if b else ""

    rows: list[tuple[str, str, str]] = [
        ("peak calls/s at full scale", f"{c['peak_total_calls_per_s']:,} ({rates})", "the same"),
        ("board members", f"{c['board_members']:,}", "the same"),
        (
            "router CPU per call of the mix (measured)",
            *both(
                lambda x: (
                    f"{x['measured']['router_cpu_per_call'] * 1e6:,.0f} µs "
                    f"({_per_core(x['measured']['router_cpu_per_call'])} calls/s per router core)"
                )
            ),
        ),
        (
            "node CPU per call of the mix (measured)",
            *both(
                lambda x: (
                    f"{x['measured']['node_cpu_per_call'] * 1e6:,.1f} µs "
                    f"({_per_core(x['measured']['node_cpu_per_call'])} calls/s per node core)"
                )
            ),
        ),
        ("node memory per member, all in (measured)", *both(lambda x: f"{x['measured']['bytes_per_member']:,.0f} B")),
    ]
    basis = result.get("plan_basis", {})
    if basis.get("node_reads_per_call") is not None:
        rows.append(
            (
                "node round trips per call of the mix (measured with the node figure)",
                f"{basis['node_reads_per_call']:.2f}",
                f"{basis['bare_node_reads_per_call']:.2f}",
            )
        )
    if m.get("size_read_cpu"):
        rows += [
            (
                "node CPU per size read: a count's round trip to a node holding nothing the count asks but its "
                "sizes (measured)",
                f"{m['size_read_cpu'] * 1e6:,.1f} µs",
                "none (one sorted set: no counts)",
            ),
            (
                "size reads at full scale: every count asks every node of the board, so each node serves a size "
                "read per count round of every router",
                f"{c['size_reads_busy_per_node']:,.0%} of each node busy, however many nodes",
                "",
            ),
        ]
    rows.append((f"router cores at {h['router_utilisation']:.0%} busy", *both(lambda x: f"{x['router_cores']:,}")))
    if "router_cores_if_updates_batched" in c:
        rows.append(("router cores if updates come in batches of 100", f"{c['router_cores_if_updates_batched']:,}", ""))
    rows += [
        (f"node cores at {h['node_utilisation']:.0%} busy", *both(lambda x: _or_none(x, "node_cores_for_cpu"))),
        (f"nodes for memory at {h['node_memory_gib']:g} GiB each", *both(lambda x: f"{x['nodes_for_memory']:,}")),
        ("primary nodes", *both(_primaries)),
        (f"nodes with {h['replicas']} replica(s) each", *both(lambda x: _or_none(x, "nodes_with_replicas"))),
        (
            "data / with replicas",
            *both(lambda x: f"{x['data_gib']:,} GiB / {x['memory_gib_with_replicas']:,} GiB"),
        ),
    ]
    if not b:
        return "\n".join(["| capacity plan | rankshard |", "|---|---|", *(f"| {r[0]} | {r[1]} |" for r in rows)])
    table = "\n".join(
        [
            "| capacity plan | rankshard | bare sorted set |",
            "|---|---|---|",
            *(f"| {a} | {x} | {y} |" for a, x, y in rows),
        ]
    )
    return table + (_cached_plan(cached) if cached else "")


def _cached_plan(p: dict[str, Any]) -> str:
    """The same plan with the routers' size cache on: the one a board spread over many nodes runs with."""
    ms = round(p["size_cache_s"] * 1000)
    if p.get("closes", True):
        nodes = (
            f"{p['primary_nodes']:,} primary nodes (bound by {p['bound_by']}), {p['nodes_with_replicas']:,} with "
            "replicas"
        )
    else:
        nodes = _primaries(p)
    return (
        f"\n\nWith the routers' size cache on (`--size-cache-ms {ms}`: a count takes the sizes a router saw on a "
        f"node within {ms} ms instead of asking it, so a rank can miss other routers' writes of that long ago; "
        "docs/api.md), each node serves each router's size reads at most once per bound, "
        f"{p['size_reads_busy_per_node']:.1%} of each node busy with them ({p['router_cores']:,} router processes, "
        f"one per router core), and the plan needs {nodes}, from "
        f"{p['measured']['node_cpu_per_call'] * 1e6:,.1f} µs of node CPU per call of the mix measured with the "
        "cache on (the plan phases below) or, without that phase, the table's own figure."
    )


def _or_none(plan: dict[str, Any], key: str) -> str:
    return "none suffice" if plan[key] is None else f"{plan[key]:,}"


def _primaries(plan: dict[str, Any]) -> str:
    if plan.get("closes", True):
        return f"{plan['primary_nodes']:,} (bound by {plan['bound_by']})"
    return (
        f"does not close: size reads alone keep every node {plan['size_reads_busy_per_node']:,.0%} busy, over the "
        f"{plan['headroom']['node_utilisation']:.0%} planned; each router's count rounds would have to hold "
        f"{plan['count_round_to_close']:,} calls or more"
    )


def plan_assumptions(result: dict[str, Any]) -> str:
    """What the plan rests on, each figure with the load it was measured at."""
    basis, c = result["plan_basis"], result["capacity"]
    h, sim = c["headroom"], result["simulation"]
    bare_busy = ", ".join(f"{k} {v:.0%}" for k, v in basis["bare_node_busy"].items())
    node_phase = _NODE_PHASES[basis["node_phase"]]
    return "\n".join(
        [
            "- Peak rates from the traffic model; costs per call and per member stay the same at full scale, but "
            "for counts: every call of the mix counts (a rank, or a page's place), every count asks every node "
            "holding the board's shards, and at a planned router's rate a count round holds about one call. So each "
            "node beyond the "
            f"{c['measured']['measured_nodes']} measured adds a size read per call, at the node CPU a size read "
            f"cost here (the GetTop phase's node that read no page, {basis.get('size_read_node_busy', 0):.0%} busy), "
            "and those size reads load every node alike, whatever the number of nodes.",
            f"- Routers planned {h['router_utilisation']:.0%} busy: the router figure is the simulation's, open loop "
            f"at {basis['router_phase_rate']:,.0f} calls/s, with the router {basis['router_busy']:.0%} busy.",
            f"- Nodes planned {h['node_utilisation']:.0%} busy (one command thread each): the node figure is "
            f"{node_phase}'s, open loop at {basis['node_phase_rate']:,.0f} calls/s, with the nodes "
            f"{basis['node_busy']:.0%} busy on average (busiest {basis['busiest_node']:.0%}). A node mostly idle "
            "spends more CPU per call than a busy one (waking up), so a figure measured below 50% busy errs high."
            + _in_process(result)
            + _node_bound(result),
            f"- Memory: all in per member at {basis['memory_members']:,} members on a board created for its size; "
            f"{h['node_memory_gib']:g} GiB of data per node, {h['replicas']} replica(s) per primary.",
            f"- Bare sorted-set design: one sorted set per board; its node CPU per call is the mix "
            f"({', '.join(f'{k} {v:.0%}' for k, v in sim['mix'].items())}) of the bare baselines in the node CPU "
            f"table, measured closed loop from one redis-py process in pipelines of 100 (nodes busy: {bare_busy}); "
            "its memory the bare "
            "sorted set's used_memory per member; the same headroom and replicas.",
            f"- Bare design's routers: assumed to cost what the gRPC echo server costs per call of the same mix at "
            f"the same rate ({basis['echo_busy']:.0%} busy): a gRPC tier doing nothing but gRPC, the least any "
            "Python service in front of the sorted sets costs (a real one adds its Redis client's work).",
            "- The bare design's node counts assume its work divides over nodes as rankshard's does; one board in "
            "one sorted set cannot (its writes land on one node's one thread), so they are the least a bare design "
            "costs, not a design that serves the model.",
        ]
    )


_NODE_PHASES = {
    "run": "the simulation",
    "nodes": "the busier-nodes phase",
    "inproc": "the phase of routers in process",
    "inproc_one": "the one-node phase of routers in process",
}


def _in_process(result: dict[str, Any]) -> str:
    """How the phase of routers in process was run, when it was."""
    m = result["simulation"]["phases"].get("inproc")
    if m is None:
        return ""
    run = result["simulation"]["run"]["latency"]["p50_ms"]
    tries = "; ".join(
        f"{t['routers']} routers, nodes {t['nodes_busy']:.0%} busy, median {t['p50_ms']:.2f} ms"
        + ("" if t["kept_up"] else ", fell behind")
        for t in m.get("tries", [])
    )
    if result["plan_basis"]["node_phase"] == "inproc":
        verdict = "is the node figure."
    elif result["plan_basis"]["node_phase"] == "inproc_one":
        verdict = "is not the node figure: " + _one_node(result)
    elif m["kept_up"]:
        verdict = "is not the node figure (no nearer 50% busy)."
    else:
        verdict = "is not the node figure (it fell behind: its routers batched a backlog)."
    return (
        f" Through the router processes the machine's cores run out first, so the mix was also offered through "
        f"{m['routers']} routers served inside the load generators (the router's own service, coalescing and data "
        f"path, without gRPC), each at {m['rate_per_router']:,.0f} calls/s, the rate that kept a router process "
        f"{result['plan_basis']['router_busy']:.0%} busy, so each batches as a planned router does; it answered in "
        f"{m['latency']['p50_ms']:.2f} ms at the median (the simulation: {run:.2f} ms)"
        + (f" (phases run: {tries})" if len(m.get("tries", [])) > 1 else "")
        + f" and {verdict}"
    )


def _one_node(result: dict[str, Any]) -> str:
    """How the phase on a cluster of one node went, when it gave the node figure."""
    m = result["simulation"]["phases"]["inproc_one"]
    return (
        f"then {m['routers']} routers in process, {m['rate_per_router']:,.0f} calls/s each, served a cluster of "
        f"one node holding a whole board ({m['members']:,} members, its index and every shard, cut as the "
        f"simulation board's), which carried all of each call's node work and was {m['busy']['nodes']:.0%} busy; "
        f"they answered in {m['latency']['p50_ms']:.2f} ms at the median, and that node's CPU per call is the node "
        "figure, with that one node counted as measured."
    )


def _node_bound(result: dict[str, Any]) -> str:
    """When the nodes stayed well under the plan's utilisation: what stopped the load, as measured."""
    basis, h = result["plan_basis"], result["capacity"]["headroom"]
    if basis["node_busy"] >= h["node_utilisation"] - 0.1:
        return ""
    if basis["node_phase"] in ("inproc", "inproc_one"):
        return (
            " Here the nodes got no busier: the load generators, serving the routers in process, took the rest of "
            "the machine's cores."
        )
    cap = result["simulation"]["capacity"]
    return (
        f" Here the nodes got no busier: at the mix's closed-loop capacity ({_n(cap['calls_per_s'])} calls/s) the "
        f"router was {cap['busy']['router']:.0%} busy and the nodes {cap['busy']['nodes']:.0%}, so the machine's "
        "cores (shared by the router, the nodes and the load generators) run out before the nodes do; the offered "
        "load stops there."
    )


def plan_phases_table(result: dict[str, Any]) -> str:
    """The open-loop mix phases the plan's figures come from."""
    sim = result["simulation"]
    lines = [
        "| phase | offered calls/s | completed | router busy | nodes busy (busiest) | router µs/call | node µs/call "
        "| p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "capacity": "capacity (closed loop)",
        "calibration": "calibration, half of capacity",
        "run": "simulation (router figure)",
        "nodes": "nodes busier",
        "inproc": "routers in process (no gRPC)",
        "inproc_one": "routers in process, a cluster of one node",
        "inproc_cached": "routers in process, size cache on (the cached plan's node figure)",
        "echo": "echo server, same rate",
    }
    phases = {"capacity": sim["phases"]["capacity"], "calibration": sim["phases"]["calibration"], "run": sim["run"]}
    phases.update(
        {k: v for k, v in sim["phases"].items() if k in ("nodes", "inproc", "inproc_one", "inproc_cached", "echo")}
    )
    for key, m in phases.items():
        busy = m.get("busy", {})
        calls = max(m["calls"], 1)
        label = names[key] + (" (node figure)" if key == sim["node_phase"] else "")
        node_us = "" if key == "echo" else f"{1e6 * m['node_cpu_s'] / calls:.1f}"
        lines.append(
            f"| {label} | {_n(m['offered_per_s']) if m['offered_per_s'] else ''} | {_n(m['calls_per_s'])} "
            f"| {busy.get('router', 0):.0%} | {busy.get('nodes', 0):.0%} ({busy.get('busiest_node', 0):.0%}) "
            f"| {1e6 * m['server_cpu_s'] / calls:.0f} | {node_us} | {m['latency']['p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def _per_core(cpu_per_call: float) -> str:
    return f"{1 / cpu_per_call:,.0f}" if cpu_per_call else "n/a"


def markdown(result: dict[str, Any]) -> str:
    p, sim = result["profile"], result["simulation"]
    run = sim["run"]
    share = result["preload"]["active_hour_share"]
    mem = [
        f"| members | stored B/member | all in, {share:.0%} active in the hour | every member active "
        "| bare zset B/member | ratio (all in / bare) | RSS B/member |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result["memory"]:
        mem.append(
            f"| {m['members']:,} | {m['stored_per_member']:.0f} | {m['all_in_per_member']:.0f} "
            f"| {m['every_member_active_per_member']:.0f} | {m['bare_zset_per_member']:.0f} "
            f"| {m['ratio_to_bare']:.2f} | {m['rss_per_member']:.0f} |"
        )
    kinds = ", ".join(
        f"{k} {v['calls_per_s']:,.0f}/s p99 {v['latency']['p99_ms']:.1f} ms" for k, v in run["kinds"].items()
    )
    pre = result["preload"]
    largest = max(m["members"] for m in result["memory"])
    size_note = (
        ""
        if largest >= 5_000_000
        else f" This run measured memory at {largest:,} members only; the goal's size, 5,000,000, takes "
        "`--full` (a fill of about two minutes)."
    )
    few, many = min(p["shard_counts"]), max(p["shard_counts"])
    sections = [
        f"# rankshard bench: profile {p['name']}",
        f"Command: `{result['command']}`. Took {result.get('wall_seconds', result['seconds']):.0f} s wall "
        f"({p['rounds']} interleaved rounds of {p['phase_seconds']:g} s phases)."
        + (f" Nodes: {result['node_server']}." if "node_server" in result else "")
        + " Machine-relative figures: compare the ratios, each measured against a baseline in this same run.",
        "## Goals\n\n" + headline(result),
        "## Node CPU per call\n\n"
        f"The nodes' own CPU time (`used_cpu_user + used_cpu_sys` of all {p['nodes']} nodes) per call, on the "
        f"{few}-shard board of {p['shard_population']:,} members, beside a bare sorted set of the same members "
        "and scores on each of the same nodes, driven from one redis-py process in pipelines of 100 calls, in the "
        "same rounds. Nodes busy: their mean CPU share during the phase. Node round trips per call: the read events "
        "the nodes processed (`total_reads_processed`, each a client's write waking a node) per call; most of a "
        "call's node CPU at a low busy share is the cost of these wake-ups, which batching spreads over more "
        "calls.\n\n" + node_cpu_table(result),
        "## Shard-count series\n\n"
        f"{p['nodes']} nodes, {p['shard_population']:,} members per board, {p['in_flight']} calls in flight, "
        f"closed loop. The {few}- and {many}-shard rows are each the median of {p['rounds']} rounds; the others "
        "one measurement.\n\n" + shard_series_table(result),
        "## Capacity plan for the full model\n\n"
        + capacity_table(result)
        + "\n\nAssumptions:\n\n"
        + plan_assumptions(result)
        + "\n\nThe open-loop phases of the model's mix the figures come from:\n\n"
        + plan_phases_table(result),
        "## Throughput, side by side (closed loop)\n\n" + throughput_table(result),
    ]
    if "latency" in result:
        lat = ["| RPC at rate | echo p50 / p99 ms | router p50 / p99 ms |", "|---|---|---|"]
        for kind, probe in result["latency"].items():
            e, r = probe["echo"]["latency"], probe["router"]["latency"]
            lat.append(
                f"| {kind} at {probe['rate']:,.0f}/s | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} "
                f"| {r['p50_ms']:.2f} / {r['p99_ms']:.2f} |"
            )
        sections.append(
            "## Latency at the same offered load (open loop)\n\n"
            "Each row: the pair of probes (echo, then router) whose p99 ratio is the median of the rounds.\n\n"
            + "\n".join(lat)
        )
    sections.append(
        "## Memory per member\n\n"
        + "\n".join(mem)
        + f"\n\nThe board was created for {pre['laid_out_for']:,} members (`expected_members`: its index and "
        "version registers spread over hashes of about 64 entries at that size, as a deployment would create "
        "a board for its size). Stored: index, shard and version registers. A request-id record costs "
        f"{result['memory'][0]['request_id_record_bytes']:.0f} B per member holding one (members idle for "
        f"an hour hold none). Loaded {pre['members']:,} members at {pre['members_per_s']:,.0f}/s with "
        "`rankshard leaderboards import` "
        "(append-only files on, as deployed)"
        + (
            f", then filled to {pre['filled_to']:,} with it, append-only files paused."
            if pre["filled_to"] > pre["members"]
            else "."
        )
        + size_note
    )
    if "scaling" in result:
        scale = ["| router processes | UpdateScore calls/s | per router core | p99 ms |", "|---|---|---|---|"]
        for s in result["scaling"]:
            scale.append(
                f"| {s['routers']} | {_n(s['calls_per_s'])} | {_n(s['calls_per_router_core'])} | {s['p99_ms']:.2f} |"
            )
        sections.append("## Router processes on one port\n\n" + "\n".join(scale))
    else:
        sections.append(
            "Latency probes, router processes on one port and the direct-driver batch baseline: `--full` only."
        )
    sections += [
        f"## Traffic simulation\n\n{run['seconds']:.0f} s open loop at {run['offered_per_s']:,.0f} calls/s "
        f"({sim['scale']:.2e} of the full-scale peak; {SIM_SHARE_NOTE}), "
        f"completed {run['calls_per_s']:,.0f}/s, p50 {run['latency']['p50_ms']:.2f} ms, "
        f"p99 {run['latency']['p99_ms']:.2f} ms, errors {run['errors'] or 0}, shed {run['shed']}.\n\n"
        f"By call: {kinds}.",
        "Plots: " + ", ".join(f"[{name}]({name})" for name in PLOTS),
    ]
    return "\n\n".join(sections) + "\n"


SIM_SHARE_NOTE = "the rate that keeps the router 60% busy by the calibration phase"
