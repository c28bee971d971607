"""Measurements of rankshard through its public surfaces (gRPC and the CLI).

`run_bench` is ``rankshard bench``: the traffic model, the baselines measured in the same run, the
report and the capacity plan. See `PROFILES` for the shapes of a run.
"""

from ._bench import Progress, print_progress
from ._main import run_bench
from ._model import PROFILES, Profile, TrafficModel

__all__ = ["PROFILES", "Profile", "Progress", "TrafficModel", "print_progress", "run_bench"]
