"""Running one rebalancing job from the command line: the progress shown as it goes, the line of its result, Ctrl-C,
and the test hook that kills the CLI at a step (docs/operations.md, "Rebalancing").

`run_job` and `abort_job` are what every command that runs jobs uses (``shards split|merge|move``, ``jobs resume``,
``jobs abort``, ``rebalance``); `job_owner` names this process as the owner of the jobs it plans and claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import click

from rankshard.shard_map import (
    ControlPlane,
    Job,
    JobKind,
    JobState,
    JobStep,
    RankshardError,
    Settings,
    Shard,
    ShardMap,
)
from rankshard.shard_node import Carver, Cluster

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

Echo = Callable[[str], None]
StepHook = Callable[[Job], None]

LOG_EVERY = 10.0
"""Seconds between the progress lines of one step, when the output is not a terminal (a log)."""


def job_owner() -> str:
    """This process as a job's owner: ``rankshard HOST pid PID`` (shown by `jobs list` and in `JobBusy`)."""
    return f"rankshard {socket.gethostname()} pid {os.getpid()}"


class JobInterrupted(click.ClickException):
    """The job was stopped by Ctrl-C where its row says; its claim was given up, so it can be resumed at once."""

    exit_code = 130  # as a shell reports a command ended by SIGINT

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"{job.describe()}: interrupted at {job.step}; resume it with `rankshard jobs resume {job.id}` "
            "(or run the same command again)"
        )
        self.job = job


async def run_job(
    cp: ControlPlane,
    cluster: Cluster,
    job: Job,
    settings: Settings,
    *,
    echo: Echo = click.echo,
    terminal: bool | None = None,
    on_step: StepHook | None = None,
) -> Job:
    """Claims `job` for this process and carries it to its end: DONE, or ABORTED when it had to roll back (an
    ABORTING job is rolled back). Shows its progress (a bar on a terminal, else one line per step through `echo`;
    `terminal` None: whether stdout is one), then one line with the result; returns the last row. `on_step` is
    called after the progress with each row recorded.

    Raises `JobInterrupted` on Ctrl-C (the claim given up), and what `Carver.run` raises (`JobBusy`, `JobFailed`,
    `NodeError`, `ControlPlaneError`): the job then stays where its row says, to be resumed."""
    return await _carry(cp, cluster, job, settings, lambda carver, j: carver.run(j), echo, terminal, on_step)


async def abort_job(
    cp: ControlPlane,
    cluster: Cluster,
    job: Job,
    settings: Settings,
    *,
    echo: Echo = click.echo,
    terminal: bool | None = None,
    on_step: StepHook | None = None,
) -> Job:
    """Rolls `job` back as `run_job` runs it (the same progress and errors); `JobFailed` for a committed job."""
    return await _carry(cp, cluster, job, settings, lambda carver, j: carver.abort(j), echo, terminal, on_step)


async def _carry(
    cp: ControlPlane,
    cluster: Cluster,
    job: Job,
    settings: Settings,
    work: Callable[[Carver, Job], Awaitable[Job]],
    echo: Echo,
    terminal: bool | None,
    on_step: StepHook | None,
) -> Job:
    owner = job_owner()
    shown = _Progress(job, sys.stdout.isatty() if terminal is None else terminal, echo)
    hooks = [shown, *([crash_hook(settings.job_crash_at)] if settings.job_crash_at else []), on_step]
    carver = Carver(cp, cluster, owner, lease_s=settings.job_lease, pace=settings.job_pace, on_step=_each(hooks))
    with shown:
        try:
            job = await work(carver, job)
        except asyncio.CancelledError:
            raise JobInterrupted(await _given_up(cp, shown.last, owner)) from None
    echo(outcome(job, await cp.shard_map(job.board)))
    return job


async def _given_up(cp: ControlPlane, job: Job, owner: str) -> Job:
    """The job's row once this process's claim on it is given up (so `jobs resume` need not wait for it to pass);
    the row as last seen when that fails, or when another process has claimed the job meanwhile."""
    with contextlib.suppress(RankshardError):  # JobBusy: not this process's (any more); ControlPlaneError: it lapses
        return await cp.jobs.advance(job, owner, 0)
    return job


def _each(hooks: list[StepHook | None]) -> StepHook:
    def hook(job: Job) -> None:
        for one in hooks:
            if one is not None:
                one(job)

    return hook


def crash_hook(spec: str) -> StepHook:
    """The hook of `Settings.job_crash_at` (``STEP`` or ``STEP:N``): SIGKILLs this process right after the job's row
    was recorded at STEP the N-th time (default the first; a step records its progress a few times a second)."""
    step, _, nth = spec.partition(":")
    remaining = [int(nth or 1)]

    def hook(job: Job) -> None:
        if job.step == step:
            remaining[0] -= 1
            if remaining[0] == 0:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def outcome(job: Job, shard_map: ShardMap) -> str:
    """One line: what the job made of the board (the shards it left, members carved, how long writes waited)."""
    if job.state is JobState.ABORTED:
        return f"{job.describe()}: rolled back ({job.error}); shard {job.source} serves as before"
    if job.state is JobState.RUNNING:
        return f"{job.describe()}: stopped at {job.step}"
    shards = {s.id: s for s in shard_map.shards}
    if job.kind is JobKind.SPLIT:
        made = f"split into {_shown(shards, job.source)} and {_shown(shards, job.target)}"
    elif job.kind is JobKind.MERGE:
        made = f"merged into {_shown(shards, job.target)}"
    else:
        made = f"moved: now {_shown(shards, job.target)}"
    frozen = "-" if job.freeze_ms is None else f"{job.freeze_ms:,} ms"
    return f"{job.describe()}: done, {made}; {job.copied:,} members carved, writes frozen {frozen}"


def _shown(shards: dict[str, Shard], shard_id: str) -> str:
    shard = shards.get(shard_id)
    if shard is None:
        return shard_id
    lower = "-inf" if shard.lower is None else str(shard.lower)
    upper = "inf" if shard.upper is None else str(shard.upper)
    return f"{shard_id} [{lower}, {upper}) on {shard.node}"


def progress_text(job: Job) -> str:
    """What the row says of the step under way: ``COPY 12,000/100,000``, ``CATCHUP dirty 42``..."""
    if job.step is JobStep.COPY:
        return f"COPY {job.copied:,}/{job.total:,}" if job.total else "COPY"
    if job.step in (JobStep.CATCHUP, JobStep.FREEZE):
        return f"{job.step} {job.copied:,}/{job.total:,} copied, dirty {job.dirty:,}"
    if job.step.committed and job.freeze_ms is not None:
        return f"{job.step}, writes were frozen {job.freeze_ms:,} ms"
    return str(job.step)


class _Progress:
    """The job as the user sees it while it runs: on a terminal a bar over the members copied (rate, ETA, dirty set
    and freeze time beside it); otherwise a line for each step, and one every `LOG_EVERY` seconds within one."""

    def __init__(self, job: Job, terminal: bool, echo: Echo) -> None:
        self.last = job
        self.echo = echo
        self._bar: ProgressBar[int | None] | None = None
        self._terminal = terminal
        self._started = time.monotonic()
        self._copied_at_start = job.copied
        self._logged: tuple[JobStep, float] | None = None

    def __enter__(self) -> _Progress:
        if self._terminal:
            label = f"job {self.last.id} {self.last.kind} {self.last.source}"
            bar = click.progressbar(
                length=self.last.total,
                label=label,
                show_eta=True,
                show_percent=True,
                show_pos=True,
                width=0,
                item_show_func=self._item,
            )
            self._bar = bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.render_finish()

    def __call__(self, job: Job) -> None:
        self.last = job
        if self._bar is not None:
            self._bar.length = job.total
            self._bar.update(max(0, job.copied - self._bar.pos), job.copied)
            self._bar.render_progress()
            return
        if self._logged is not None and self._logged[0] is job.step:
            if time.monotonic() - self._logged[1] < LOG_EVERY:
                return  # within a step (copying, catching up), a line now and then
        elif job.step is JobStep.COPY and not job.total:
            return  # the step has begun but not yet counted its members: the next row says how many
        self._logged = (job.step, time.monotonic())
        self.echo(f"{job.describe()}: {progress_text(job)}")

    def _item(self, _: int | None) -> str:
        job = self.last
        elapsed = max(time.monotonic() - self._started, 1e-3)
        rate = (job.copied - self._copied_at_start) / elapsed
        text = f"{job.step} {rate:,.0f}/s" if job.step in (JobStep.COPY, JobStep.CATCHUP) else str(job.step)
        if job.dirty:
            text += f" dirty {job.dirty:,}"
        if job.freeze_ms is not None:
            text += f" frozen {job.freeze_ms:,} ms"
        return text


@contextlib.contextmanager
def stopped_cleanly() -> Iterator[None]:
    """A Ctrl-C that came before or after a job ran (while planning, say) is a one-line error too."""
    try:
        yield
    except KeyboardInterrupt:
        raise click.ClickException(
            "interrupted; `rankshard jobs list` shows any job it left, `rankshard jobs resume ID` finishes it"
        ) from None
