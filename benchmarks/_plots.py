"""PNG plots of a run: throughput and latency over time, latency percentiles, shard balance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from ._hist import Histogram

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402 -- imported once the backend is chosen, which pyplot fixes

_PERCENTILES = (50, 75, 90, 95, 99, 99.9)


def plot_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    return [
        _timeline(result, out_dir / "timeline.png"),
        _latency(result, out_dir / "latency.png"),
        _shards(result, out_dir / "shards.png"),
    ]


def _timeline(result: dict[str, Any], path: Path) -> Path:
    run = result["simulation"]["run"]
    t = [p["t"] for p in run["timeline"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [p["items_per_s"] for p in run["timeline"]], label="completed calls/s")
    top.axhline(run["offered_per_s"], color="grey", linestyle="--", label="offered")
    top.set_ylabel("calls/s")
    top.legend(loc="lower right")
    bottom.plot(t, [p["p50_ms"] for p in run["timeline"]], label="p50")
    bottom.plot(t, [p["p99_ms"] for p in run["timeline"]], label="p99")
    bottom.set_ylabel("latency, ms")
    bottom.set_xlabel("seconds into the simulation")
    bottom.legend(loc="upper right")
    fig.suptitle("Traffic simulation (open loop, the model's mix)")
    return _save(fig, path)


def _latency(result: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5))
    series = {f"sim {k}": v["hist"] for k, v in result["simulation"]["run"]["kinds"].items()}
    for kind, probe in result.get("latency", {}).items():
        series[f"echo {kind} @{probe['rate']:,.0f}/s"] = probe["echo"]["kinds"][kind]["hist"]
        series[f"router {kind} @{probe['rate']:,.0f}/s"] = probe["router"]["kinds"][kind]["hist"]
    x = range(len(_PERCENTILES))
    for label, hist_json in series.items():
        h = Histogram.from_json(hist_json)
        ax.plot(x, [h.percentile(p) / 1000 for p in _PERCENTILES], marker="o", label=label)
    ax.set_xticks(list(x), [f"p{p:g}" for p in _PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.legend(fontsize="small")
    ax.set_title("Latency percentiles (open loop)")
    return _save(fig, path)


def _shards(result: dict[str, Any], path: Path) -> Path:
    shards = result["shard_balance"]
    fig, ax = plt.subplots(figsize=(9, 4))
    nodes = sorted({s["node"] for s in shards})
    colors = {n: f"C{i}" for i, n in enumerate(nodes)}
    ax.bar(range(len(shards)), [s["members"] for s in shards], color=[colors[s["node"]] for s in shards])
    ax.set_xticks(range(len(shards)), [s["id"] for s in shards], rotation=60, fontsize="small")
    ax.set_ylabel("members")
    ax.set_title("Shard balance of the simulated board (colour: node; boundaries from score quantiles)")
    for n in nodes:
        ax.bar([], [], color=colors[n], label=n)
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
