"""A node's CPU per request when requests come far apart: ``python -m rankshard.benchmarks.node_wakeups``.

The capacity plan divides the nodes' CPU time during the simulation by its calls. There the nodes are
mostly idle between requests, and a request that wakes an idle node costs it more CPU than the same
request reaching a busy one, so the plan's node count errs high. This measures by how much on this
machine: one script call (eight shards' descriptor and size, what a rank's count round reads on a node)
sent back to back, then one every 0.2, 0.5, 1 and 2 ms, the node's own CPU time per call each way
(medians of 3 interleaved rounds). Starts a one-node local cluster in a temporary folder and stops it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from ._procs import Cluster, free_port
from ._replies import info

_SCRIPT = """
local out = {}
for i = 1, 8 do
  if redis.call('GET', KEYS[1] .. ':d' .. i) == false then return {'stale', i} end
  table.insert(out, redis.call('ZCARD', KEYS[1] .. ':z' .. i))
end
return out
"""
_PREFIX = "bench:wakeups"
GAPS_MS = (0.0, 0.2, 0.5, 1.0, 2.0)


def _node_cpu(node: redis.Redis) -> float:
    cpu = info(node, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(node: redis.Redis, gap_ms: float, calls: int) -> tuple[float, float]:
    """(node CPU µs per call, calls/s) for `calls` calls, each sent `gap_ms` after the previous was due
    (the client waits by spinning, so it is never the one being woken)."""
    script = node.register_script(_SCRIPT)
    gap = gap_ms / 1000
    cpu0, t0 = _node_cpu(node), time.perf_counter()
    due = t0
    for _ in range(calls):
        script(keys=[_PREFIX])
        due += gap
        while time.perf_counter() < due:
            pass
    took = time.perf_counter() - t0
    return 1e6 * (_node_cpu(node) - cpu0) / calls, calls / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rankshard-wakeups-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster", nodes=1, port=free_port())
        try:
            node = cluster.node(cluster.nodes[0])
            for i in range(1, 9):
                node.set(f"{_PREFIX}:d{i}", "descriptor")
                node.zadd(f"{_PREFIX}:z{i}", {f"m{j}": j for j in range(1000)})
            rounds = [[measure(node, gap, args.calls) for gap in GAPS_MS] for _ in range(3)]
            node.delete(*(f"{_PREFIX}:{k}{i}" for i in range(1, 9) for k in "dz"))
        finally:
            cluster.stop()
    print("| one call every | calls/s | node CPU per call | against back to back |")
    print("|---|---|---|---|")
    busy = statistics.median(r[0][0] for r in rounds)
    for i, gap in enumerate(GAPS_MS):
        cpu = statistics.median(r[i][0] for r in rounds)
        rate = statistics.median(r[i][1] for r in rounds)
        label = "back to back" if gap == 0 else f"{gap:g} ms"
        print(f"| {label} | {rate:,.0f} | {cpu:.1f} µs | {cpu / busy:.2f}× |")


if __name__ == "__main__":
    main()
