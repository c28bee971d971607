"""The jobs of a plan run one after another from the command line: what `rebalance` and `nodes drain` print as
each of their jobs goes. Each job runs as `run_job` runs a single one, its lines (one per step, then its result)
indented under the plan's step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rankshard.shard_map import ControlPlane, Job, JobState, Settings
from rankshard.shard_node import Cluster

from ._job_run import JobInterrupted, run_job


class StepRunner:
    """A `JobRunner` that says one line as each job begins, then `run_job`'s log lines for it (never a progress
    bar: the plan's lines go on around it): ``  job 7 (move s3 n1 -> n2 (as s9) of 'global'): COPY 0/12,000``.
    `current` is the job it runs (or ran last): the one an interrupt leaves behind."""

    def __init__(self, cp: ControlPlane, cluster: Cluster, say: Callable[[str], None], settings: Settings) -> None:
        self.say = say
        self.current: Job | None = None
        self.lease_s = settings.job_lease
        self._cp, self._cluster, self._settings = cp, cluster, settings

    async def __call__(self, number: int, job: Job) -> Job:
        self.current = job
        self.say(f"step {number}: {job.describe()}")
        try:
            job = await run_job(
                self._cp, self._cluster, job, self._settings, echo=self._indented, terminal=False, on_step=self._seen
            )
        except JobInterrupted as stopped:
            # Ctrl-C: the claim is given up; the whole run stops, and `interrupted` says what it left.
            self.current = stopped.job
            raise asyncio.CancelledError from None
        self.current = job
        return job

    def _indented(self, line: str) -> None:
        self.say(f"  {line}")

    def _seen(self, job: Job) -> None:
        self.current = job

    def interrupted(self) -> str:
        """What to tell the user when Ctrl-C stopped the run."""
        job = self.current
        if job is None or job.state is not JobState.RUNNING:
            return "interrupted before a job began; nothing is left half done"
        return (
            f"interrupted: {job.describe()} is left at {job.step}; `rankshard jobs resume {job.id}` finishes it "
            "(or rolls it back), then plan again"
        )
