"""One benchmark run from start to report."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ._bench import Bench, DirectDriver, Progress, print_progress
from ._loadgen import RouterFactory
from ._model import Profile
from ._report import write_report
from ._suite import run_suite, wall_goal


def run_bench(
    profile: Profile,
    out_dir: Path,
    *,
    command: str,
    progress: Progress = print_progress,
    seed: int = 1,
    direct: DirectDriver | None = None,
    routers: RouterFactory | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Starts every process the run needs in a temporary folder, runs the suite, stops them all, and
    writes the report into `out_dir`. Returns the result and the files written. Without `direct` (see
    `DirectDriver`) the batch goal against the same node operations driven directly is left out; it runs
    only with the profile's extras. Without `routers` (see `RouterFactory`) the capacity plan's node figure comes
    only from phases through the router processes."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rankshard-bench-") as tmp:
        with Bench(profile, Path(tmp), progress, seed, direct=direct, routers=routers) as bench:
            result = run_suite(bench)
    # Every process started and stopped: the wall time a user waits for, short of writing the report.
    result["wall_seconds"] = time.perf_counter() - started
    result["goals"].append(wall_goal(result["wall_seconds"], profile.extras))
    progress(f"writing the report into {out_dir}")
    return result, write_report(result, out_dir, command)
