"""Rebalancing jobs as the control plane records them: one CARVE each (docs/architecture.md, "Rebalancing").

A job carves the members of source shard S whose score lies in range R into target shard T on node N. A split
carves ``[cut, upper)`` into a new shard on S's node, a merge carves all of S into its neighbour T, a move carves all
of S into a new shard on another node. Nothing here waits or touches the network.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class JobKind(enum.StrEnum):
    SPLIT = "split"
    MERGE = "merge"
    MOVE = "move"


class JobState(enum.StrEnum):
    RUNNING = "RUNNING"
    DONE = "DONE"
    ABORTED = "ABORTED"


class JobStep(enum.StrEnum):
    """The steps of CARVE in order; a job's row names the last one it has finished starting."""

    PLAN = "PLAN"
    PREPARE = "PREPARE"
    FLOOR = "FLOOR"
    COPY = "COPY"
    CATCHUP = "CATCHUP"
    FREEZE = "FREEZE"
    COMMITTED = "COMMITTED"
    """The point of no return: the new map is the control plane's; from here the job only rolls forward."""
    CLEANUP = "CLEANUP"
    DONE = "DONE"
    ABORTING = "ABORTING"
    """Rolling back (only before COMMITTED): the source serves again under a new generation, the target is cleared."""

    @property
    def committed(self) -> bool:
        return self in _ROLLING_FORWARD


_ROLLING_FORWARD = frozenset({JobStep.COMMITTED, JobStep.CLEANUP, JobStep.DONE})


@dataclass(frozen=True, slots=True)
class CarvePlan:
    """What a job does, fixed when it is planned (client scores, ``None`` unbounded): the carved range R, the
    source's and the target's ranges and generations before the job, and the node the source is on."""

    lower: int | None
    upper: int | None
    source_node: str
    source_generation: int
    """The source's generation when planned: PREPARE refuses to start if it changed meanwhile."""
    source_lower: int | None
    source_upper: int | None
    target_lower: int | None
    target_upper: int | None
    """The target's range before the job: a merge target's own; for a new target, R."""
    target_generation: int = 1
    """A merge target's generation before the job; a new target's while INCOMING and once ACTIVE."""
    cut: int | None = None
    """A split's cut (R is ``[cut, upper)``)."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CarvePlan:
        values: dict[str, Any] = {f.name: raw.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of ``migration_jobs``."""

    id: int
    board: str
    kind: JobKind
    state: JobState
    step: JobStep
    source: str
    target: str
    target_node: str
    plan: CarvePlan
    copied: int = 0
    total: int = 0
    dirty: int = 0
    freeze_ms: int | None = None
    scan_cursor: str = "0"
    owner: str | None = None
    lease_until: datetime | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def shards(self) -> tuple[str, ...]:
        """The shards the job works on (locked against other jobs while it runs)."""
        return (self.source, self.target)

    def describe(self) -> str:
        """One line: ``job 7 (move s3 n1 -> n2 of "global")``."""
        if self.kind is JobKind.SPLIT:
            what = f"split {self.source} at {self.plan.cut} -> {self.target}"
        elif self.kind is JobKind.MERGE:
            what = f"merge {self.source} into {self.target}"
        else:
            what = f"move {self.source} {self.plan.source_node} -> {self.target_node} (as {self.target})"
        return f"job {self.id} ({what} of {self.board!r})"
