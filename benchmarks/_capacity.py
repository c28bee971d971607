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


def plan(model: TrafficModel, measured: Measured, headroom: Headroom = Headroom()) -> dict[str, object]:
    """Router cores, nodes and memory for `model` at its peak, with every figure the plan used."""
    rates = model.peak_rates()
    calls = sum(rates.values())
    router_cores = calls * measured.router_cpu_per_call / headroom.router_utilisation
    node_cores = calls * measured.node_cpu_per_call / headroom.node_utilisation
    data_bytes = model.board_members * measured.bytes_per_member
    nodes_for_memory = data_bytes / (headroom.node_memory_gib * GIB)
    primaries = max(1, math.ceil(max(node_cores, nodes_for_memory)))
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
        "node_cores_for_cpu": round(node_cores, 1),
        "nodes_for_memory": round(nodes_for_memory, 1),
        "primary_nodes": primaries,
        "nodes_with_replicas": primaries * (1 + headroom.replicas),
        "data_gib": round(data_bytes / GIB, 1),
        "memory_gib_with_replicas": round(data_bytes * (1 + headroom.replicas) / GIB, 1),
        "bound_by": "memory" if nodes_for_memory >= node_cores else "node cpu",
    }
