"""The capacity plan: what the full-scale traffic model needs, extrapolated from per-core and per-member figures
measured on this machine. Pure arithmetic."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ._model import TrafficModel

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Measured:
    """What the plan extrapolates from, each measured in the same run."""

    router_cpu_per_call: float
    """Router CPU seconds per call of the model's mix (the open-loop simulation)."""
    node_cpu_per_call: float
    """Node CPU seconds per call of the same mix (all nodes together)."""
    bytes_per_member: float
    """Node used_memory per board member, all in (index, shard, versions, request-id records)."""
    router_cpu_per_batched_update: float = 0.0
    """Router CPU seconds per update when updates arrive in BatchUpdateScores calls of 100."""
    size_read_cpu: float = 0.0
    """Node CPU seconds of a count's round trip to a node that holds none of what the count asks but sizes. Every
    count asks every node of the board (docs/architecture.md read path), so on a board spread over many nodes most
    of a count's round trips are these; 0: counts are not planned for (the bare design, which has none)."""
    count_rounds_per_call: float = 1.0
    """Count rounds per call of the mix: each call answers a rank or a page, and at a planned router's rate a
    count round holds about one call."""
    measured_nodes: int = 2
    """The nodes the per-call figures were measured on: their size reads are in `node_cpu_per_call` already."""


@dataclass(frozen=True, slots=True)
class Headroom:
    router_utilisation: float = 0.6
    """Target busy share of a router core at peak (the rest absorbs bursts and a lost zone)."""
    node_utilisation: float = 0.5
    """Target busy share of a node's one command thread at peak."""
    node_memory_gib: float = 25.0
    """Data per node: a 64 GiB host, less fork/AOF-rewrite copy-on-write room and fragmentation."""
    replicas: int = 1
    """Replicas per primary (the engine's own replication), for failover of shards and index slots."""


def plan(
    model: TrafficModel, measured: Measured, headroom: Headroom = Headroom(), size_cache_s: float = 0.0
) -> dict[str, object]:
    """Router cores, nodes and memory for `model` at its peak, with every figure the plan used. When the board's
    size reads alone would keep every node at or above its planned utilisation, no number of nodes serves the
    peak: `closes` is False, the node counts None, and `count_round_to_close` says how many calls each router's
    count rounds would have to hold for the size reads to fit. With `size_cache_s` the routers run with that size
    cache (`--size-cache-ms`): each asks each node for sizes at most once per `size_cache_s`, one router process
    per router core."""
    rates = model.peak_rates()
    calls = sum(rates.values())
    router_cores = calls * measured.router_cpu_per_call / headroom.router_utilisation
    refreshes = math.ceil(router_cores) / size_cache_s if size_cache_s else None
    node_cores, size_reads = _node_cores(calls, measured, headroom, refreshes)
    data_bytes = model.board_members * measured.bytes_per_member
    nodes_for_memory = data_bytes / (headroom.node_memory_gib * GIB)
    closes = math.isfinite(node_cores)
    primaries = max(1, math.ceil(max(node_cores, nodes_for_memory))) if closes else None
    batched = {}
    if measured.router_cpu_per_batched_update:
        reads = calls - rates["update"]
        cpu = rates["update"] * measured.router_cpu_per_batched_update + reads * measured.router_cpu_per_call
        batched = {"router_cores_if_updates_batched": math.ceil(cpu / headroom.router_utilisation)}
    return {
        "peak_calls_per_s": {k: round(v) for k, v in rates.items()},
        "peak_total_calls_per_s": round(calls),
        "board_members": model.board_members,
        "measured": asdict(measured),
        "headroom": asdict(headroom),
        "router_cores": math.ceil(router_cores),
        **batched,
        "size_cache_s": size_cache_s,
        "size_reads_busy_per_node": round(size_reads, 3),
        "count_round_to_close": math.floor(size_reads / headroom.node_utilisation) + 1 if not closes else None,
        "closes": closes,
        "node_cores_for_cpu": round(node_cores, 1) if closes else None,
        "nodes_for_memory": round(nodes_for_memory, 1),
        "primary_nodes": primaries,
        "nodes_with_replicas": primaries * (1 + headroom.replicas) if primaries else None,
        "data_gib": round(data_bytes / GIB, 1),
        "memory_gib_with_replicas": round(data_bytes * (1 + headroom.replicas) / GIB, 1),
        "bound_by": "size reads" if not closes else "memory" if nodes_for_memory >= node_cores else "node cpu",
    }


def _node_cores(
    calls: float, measured: Measured, headroom: Headroom, refreshes: float | None = None
) -> tuple[float, float]:
    """Node cores for `calls` per second (infinite when no number of nodes serves them), and the busy share every
    node spends on size reads, whatever the number of nodes.

    With N nodes each call costs its own work, as measured on `measured_nodes` nodes, plus a size read on each of
    the other N - measured_nodes nodes per count round: N = calls * (own + (N - n0) * k * s) / u, so
    N = calls * (own - n0 * k * s) / (u - calls * k * s). The size reads alone keep every node calls * k * s busy,
    however many nodes there are: at or above u the plan does not close. With a size cache each node serves
    `refreshes` size reads a second instead (every router's, once per bound), and a call costs what it cost on
    the measured nodes (whose size reads the cache would spare in part: the plan does not count on that):
    N = calls * own / (u - refreshes * s)."""
    u = headroom.node_utilisation
    own = measured.node_cpu_per_call
    if refreshes is None:
        per_call = measured.count_rounds_per_call * measured.size_read_cpu
        size_reads = calls * per_call
        own = max(0.0, own - measured.measured_nodes * per_call)
    else:
        size_reads = refreshes * measured.size_read_cpu
    if size_reads >= u:
        return math.inf, size_reads
    return calls * own / (u - size_reads), size_reads
