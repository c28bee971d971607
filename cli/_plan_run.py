"""The jobs of a plan run one after another from the command line, one line per step: what `rebalance` and `nodes
drain` print as each of their jobs goes (a single job's command shows a progress bar: `_job_run`)."""

from __future__ import annotations

from collections.abc import Callable

from rankshard.shard_map import ControlPlane, Job, JobState, JobStep, Settings
from rankshard.shard_node import Carver, Cluster

from ._job_run import job_owner


class StepRunner:
    """A `JobRunner` over one `Carver` that says one line as each job begins, one per step it reaches, and one
    when it ends: ``job 7 (move s3 n1 -> n2 (as s9) of 'global'): COPY 0/12,000``. `current` is the job it
    runs (or ran last): the one an interrupt leaves behind."""

    def __init__(self, cp: ControlPlane, cluster: Cluster, say: Callable[[str], None], settings: Settings) -> None:
        self.say = say
        self.current: Job | None = None
        self._seen: dict[int, JobStep] = {}
        self.lease_s = settings.job_lease
        self._carver = Carver(
            cp, cluster, job_owner(), lease_s=settings.job_lease, pace=settings.job_pace, on_step=self._on_step
        )

    async def __call__(self, number: int, job: Job) -> Job:
        self.current = job
        self.say(f"step {number}: {job.describe()}")
        job = await self._carver.run(job)
        self.current = job
        if job.state is JobState.DONE:
            freeze = f", frozen {job.freeze_ms} ms" if job.freeze_ms is not None else ""
            self.say(f"  {job.describe()}: done, {job.copied:,} members copied{freeze}")
        return job

    def _on_step(self, job: Job) -> None:
        self.current = job
        if self._seen.get(job.id) is not job.step:
            self._seen[job.id] = job.step
            self.say(f"  {job.describe()}: {_progress(job)}")

    def interrupted(self) -> str:
        """What to tell the user when Ctrl-C stopped the run."""
        job = self.current
        if job is None or job.state is not JobState.RUNNING:
            return "interrupted before a job began; nothing is left half done"
        return (
            f"interrupted: {job.describe()} is left at {job.step}; `rankshard jobs resume {job.id}` finishes it "
            "(or rolls it back), then plan again"
        )


def _progress(job: Job) -> str:
    if job.step is JobStep.COPY and job.total:
        return f"COPY {job.copied:,}/{job.total:,}"
    if job.step is JobStep.CATCHUP:
        return f"CATCHUP {job.dirty:,} dirty"
    return str(job.step)
