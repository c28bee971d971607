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
    """The goals table: each ratio, its target, met or not."""
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        lines.append(f"| {g['goal']} | {g['value']:.2f} | {g['target']} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


def throughput_table(result: dict[str, Any]) -> str:
    """Side by side: echo floor, rankshard by shard count, raw storage."""
    lines = ["| what | calls/s | updates/s | per server core (calls) | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]

    def row(label: str, m: dict[str, Any]) -> None:
        lat = m["latency"]
        lines.append(
            f"| {label} | {_n(m['calls_per_s'])} | {_n(m['items_per_s'])} | {_n(m['calls_per_server_core'])} "
            f"| {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} |"
        )

    names = {"update": "UpdateScore", "rank": "GetRank", "batch": "BatchUpdateScores(100)"}
    for kind, rpc in names.items():
        row(f"echo {rpc}", result["echo"][kind])
        for n, by_kind in sorted(result["shards"].items(), key=lambda kv: int(kv[0])):
            row(f"rankshard {rpc}, {n} shard(s)", by_kind[kind])
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
    c = result["capacity"]
    m, h = c["measured"], c["headroom"]
    rates = ", ".join(f"{k} {v:,}" for k, v in c["peak_calls_per_s"].items())
    rows = [
        ("peak calls/s at full scale", f"{c['peak_total_calls_per_s']:,} ({rates})"),
        ("board members", f"{c['board_members']:,}"),
        (
            "router CPU per call of the mix (measured)",
            f"{m['router_cpu_per_call'] * 1e6:,.0f} µs ({_per_core(m['router_cpu_per_call'])} calls/s per router core)",
        ),
        (
            "node CPU per call of the mix (measured)",
            f"{m['node_cpu_per_call'] * 1e6:,.1f} µs ({_per_core(m['node_cpu_per_call'])} calls/s per node core)",
        ),
        ("node memory per member, all in (measured)", f"{m['bytes_per_member']:,.0f} B"),
        (f"router cores at {h['router_utilisation']:.0%} busy", f"{c['router_cores']:,}"),
    ]
    if "router_cores_if_updates_batched" in c:
        rows.append(("router cores if updates come in batches of 100", f"{c['router_cores_if_updates_batched']:,}"))
    rows += [
        (f"node cores at {h['node_utilisation']:.0%} busy", f"{c['node_cores_for_cpu']:,}"),
        (f"nodes for memory at {h['node_memory_gib']:g} GiB each", f"{c['nodes_for_memory']:,}"),
        ("primary nodes", f"{c['primary_nodes']:,} (bound by {c['bound_by']})"),
        (f"nodes with {h['replicas']} replica(s) each", f"{c['nodes_with_replicas']:,}"),
        ("data / with replicas", f"{c['data_gib']:,} GiB / {c['memory_gib_with_replicas']:,} GiB"),
    ]
    return "\n".join(["| capacity plan | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


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
    scale = ["| router processes | UpdateScore calls/s | per router core | p99 ms |", "|---|---|---|---|"]
    for s in result["scaling"]:
        scale.append(
            f"| {s['routers']} | {_n(s['calls_per_s'])} | {_n(s['calls_per_router_core'])} | {s['p99_ms']:.2f} |"
        )
    lat = ["| RPC at rate | echo p50 / p99 ms | router p50 / p99 ms |", "|---|---|---|"]
    for kind, probe in result["latency"].items():
        e, r = probe["echo"]["latency"], probe["router"]["latency"]
        lat.append(
            f"| {kind} at {probe['rate']:,.0f}/s | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} "
            f"| {r['p50_ms']:.2f} / {r['p99_ms']:.2f} |"
        )
    kinds = ", ".join(
        f"{k} {v['calls_per_s']:,.0f}/s p99 {v['latency']['p99_ms']:.1f} ms" for k, v in run["kinds"].items()
    )
    pre = result["preload"]
    return (
        "\n\n".join(
            [
                f"# rankshard bench: profile {p['name']}",
                f"Command: `{result['command']}`. Took {result['seconds']:.0f} s. "
                "Machine-relative figures: compare the ratios, each measured against a baseline in this same run.",
                "## Goals\n\n" + headline(result),
                "## Capacity plan for the full model\n\n" + capacity_table(result),
                "## Throughput, side by side (closed loop)\n\n" + throughput_table(result),
                "## Latency at the same offered load (open loop)\n\n"
                "Each row: the pair of probes (echo, then router) whose p99 ratio is the median of the rounds.\n\n"
                + "\n".join(lat),
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
                ),
                "## Router processes on one port\n\n" + "\n".join(scale),
                f"## Traffic simulation\n\n{run['seconds']:.0f} s open loop at {run['offered_per_s']:,.0f} calls/s "
                f"({sim['scale']:.2e} of the full-scale peak; {SIM_SHARE_NOTE}), "
                f"completed {run['calls_per_s']:,.0f}/s, p50 {run['latency']['p50_ms']:.2f} ms, "
                f"p99 {run['latency']['p99_ms']:.2f} ms, errors {run['errors'] or 0}, shed {run['shed']}.\n\n"
                f"By call: {kinds}.",
                "Plots: " + ", ".join(f"[{name}]({name})" for name in PLOTS),
            ]
        )
        + "\n"
    )


SIM_SHARE_NOTE = "60% of this machine's measured capacity for the mix"
