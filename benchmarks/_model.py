"""The traffic model: what a game with N daily active users asks of a leaderboard, at full scale and scaled down.

Pure arithmetic and random sampling; nothing here touches the network.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class TrafficModel:
    """Parameters of the simulated game, with defaults for a 500M-DAU title.

    Per finished game a backend sends one `UpdateScore`, then shows the player a rank lookup
    (`rank_per_game`), the top 10 (`top_per_game`) and sometimes the players around them
    (`around_per_game`). Scores are skewed: a lognormal spread of skill means most players sit low
    and a long tail climbs far; each game adds points in proportion to skill.
    """

    dau: int = 500_000_000
    games_per_user_per_day: float = 10.0
    peak_to_average: float = 5.0
    rank_per_game: float = 1.0
    top_per_game: float = 1.0
    around_per_game: float = 0.2
    new_player_share: float = 0.02
    """Share of daily active users who are new that day (their first update creates the member)."""
    board_members: int = 500_000_000
    """Members the board holds at full scale (every player who ever scored on it)."""
    score_median: float = 1_000.0
    score_sigma: float = 1.6
    """Lognormal shape of the preloaded scores: median, and sigma of log(score) (bigger: longer tail)."""
    points_per_game: float = 40.0
    active_hour_share: float = 0.15
    """Share of DAU that plays within any one peak hour: those members hold request-id (dedup) records."""

    def __post_init__(self) -> None:
        for name in (
            "dau",
            "games_per_user_per_day",
            "peak_to_average",
            "board_members",
            "score_median",
            "points_per_game",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)!r}")
        for name in ("rank_per_game", "top_per_game", "around_per_game", "score_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)!r}")
        for name in ("new_player_share", "active_hour_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be within 0..1, got {getattr(self, name)!r}")

    @property
    def average_updates_per_second(self) -> float:
        return self.dau * self.games_per_user_per_day / SECONDS_PER_DAY

    def peak_rates(self) -> dict[str, float]:
        """Calls per second at the daily peak, by RPC kind, at full scale."""
        updates = self.average_updates_per_second * self.peak_to_average
        return {
            "update": updates,
            "rank": updates * self.rank_per_game,
            "top": updates * self.top_per_game,
            "around": updates * self.around_per_game,
        }

    def mix(self) -> dict[str, float]:
        """Share of each RPC kind in the call stream (sums to 1)."""
        rates = self.peak_rates()
        total = sum(rates.values())
        return {kind: rate / total for kind, rate in rates.items()}

    def sample_score(self, rng: random.Random) -> int:
        return int(rng.lognormvariate(math.log(self.score_median), self.score_sigma))

    def sample_points(self, rng: random.Random) -> int:
        """Points one game adds: exponential, so most games add a little and a few a lot."""
        return 1 + int(rng.expovariate(1 / self.points_per_game))

    def boundaries(self, shards: int, sample: int = 200_000, seed: int = 1) -> list[int]:
        """Cut points that split the preloaded score distribution into `shards` equal-population ranges."""
        if shards < 1:
            raise ValueError(f"shards: must be at least 1, got {shards}")
        rng = random.Random(seed)
        scores = sorted(self.sample_score(rng) for _ in range(sample))
        cuts = sorted({scores[len(scores) * i // shards] for i in range(1, shards)})
        return [c for c in cuts if c > 0] if len(cuts) == shards - 1 else _spread(cuts, shards)


def _spread(cuts: list[int], shards: int) -> list[int]:
    # Duplicate quantiles (a very heavy low end) collapse: fill in evenly above the last distinct cut.
    top = cuts[-1] if cuts else 1
    while len(cuts) < shards - 1:
        top = top * 2 + 1
        cuts.append(top)
    return cuts


@dataclass(frozen=True, slots=True)
class Profile:
    """One benchmark run's scaled-down shape: how big, how long, which phases."""

    name: str
    model: TrafficModel = field(default_factory=TrafficModel)
    memory_at: tuple[int, ...] = (1_000_000,)
    """Member counts at which memory per member is measured; the simulated board is created for the largest
    and loaded to it before traffic starts (`full()` adds 5,000,000: a fill of about two minutes here)."""
    shard_counts: tuple[int, ...] = (4, 16, 64, 256)
    """Boards of the shard-count series. The fewest is the board of the side-by-side comparisons."""
    shard_population: int = 50_000
    """Members on each board of the shard-count series (and on each node's bare sorted set)."""
    sim_shards: int = 16
    """Shards of the simulated board (the capacity plan's mix runs on it)."""
    nodes: int = 2
    router_processes: tuple[int, ...] = (1, 2)
    duration: float = 12.0
    """Seconds of the open-loop traffic simulation at the plan's router utilisation."""
    phase_seconds: float = 2.5
    """Seconds of each throughput measurement (closed loop) and each latency probe (open loop)."""
    loaders: int = 2
    in_flight: int = 64
    batch_in_flight: int = 8
    """BatchUpdateScores(100) calls in flight (and pipelines of 100 in flight on the bare sorted set)."""
    around_radius: int = 4
    """GetAround's radius in the node-CPU comparison."""
    rounds: int = 3
    """Interleaved rounds of the side-by-side comparisons; each goal is the median of its rounds' ratios."""
    extras: bool = False
    """Also the latency probes, router processes on one port, and the direct-driver batch baseline."""

    def scaled(self, **changes: Any) -> Profile:
        return replace(self, **changes)

    def full(self) -> Profile:
        """The long run: memory also at 5M members, more rounds, the 60 s simulation, and the extras."""
        return replace(
            self,
            memory_at=tuple(sorted({*self.memory_at, 5_000_000})),
            rounds=max(self.rounds, 5),
            duration=max(self.duration, 60.0),
            extras=True,
        )


PROFILES: dict[str, Profile] = {
    "500m-dau": Profile("500m-dau"),
    "smoke": Profile(
        "smoke",
        memory_at=(2_000, 3_000),
        shard_counts=(4, 16),
        shard_population=1_000,
        sim_shards=4,
        router_processes=(1,),
        duration=1.5,
        phase_seconds=0.8,
        loaders=1,
        in_flight=16,
        batch_in_flight=2,
        rounds=1,
        extras=True,
    ),
}
