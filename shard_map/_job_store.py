"""The control plane's rows for rebalancing jobs (``migration_jobs``, ``job_shards``): created, claimed, advanced
and ended by compare-and-set, so two processes never run one job, and a job interrupted anywhere is found where it
stood. A job's map changes (PREPARE, COMMIT, an abort) commit in the same transaction as its step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection

from ._errors import AlreadyExists, NotFound, RankshardError
from ._jobs import CarvePlan, Job, JobKind, JobState, JobStep
from ._model import Shard, ShardMap

if TYPE_CHECKING:
    from ._store import ControlPlane

_COLUMNS = (
    "id, board, kind, state, step, source, target, target_node, params, copied, total, dirty, freeze_ms,"
    " scan_cursor, owner, lease_until, error, created_at, updated_at"
)


class JobConflict(AlreadyExists):
    """A shard is already in another running job; the message names that job."""

    def __init__(self, shard: str, job: Job) -> None:
        super().__init__(f"shard {shard} of {job.board!r} is already in {job.describe()}, step {job.step}")
        self.job = job


class JobBusy(RankshardError):
    """Another process holds the job's lease; the message names the owner and until when."""


class JobStore:
    """The jobs of one control plane. Every method raises `ControlPlaneError` when PostgreSQL fails."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self._cp = control_plane

    async def create(
        self,
        board: str,
        kind: JobKind,
        source: str,
        target: str,
        target_node: str,
        plan: CarvePlan,
        owner: str,
        lease_s: float,
    ) -> Job:
        """A RUNNING job at PLAN owned by `owner`, its shards locked; raises `JobConflict` naming the job that holds
        one of them."""
        async with self._cp._transaction(f"planning a {kind} on leaderboard {board!r}") as conn:
            cur = await conn.execute(
                "INSERT INTO migration_jobs (board, kind, state, step, source, target, target_node, params, owner,"
                " lease_until) VALUES (%s, %s, 'RUNNING', 'PLAN', %s, %s, %s, %s, %s,"
                " now() + make_interval(secs => %s))"
                " RETURNING id",
                (board, str(kind), source, target, target_node, json.dumps(plan.to_json()), owner, lease_s),
            )
            job_id = (await cur.fetchall())[0][0]
            for shard in dict.fromkeys((source, target)):
                await _lock_shard(conn, board, shard, job_id)
            return await _get(conn, job_id)

    async def get(self, job_id: int) -> Job:
        """Raises `NotFound`."""
        async with self._cp._transaction(f"reading job {job_id}") as conn:
            return await _get(conn, job_id)

    async def list(self, board: str | None = None, running: bool = False) -> list[Job]:
        """Jobs, newest first (of `board`; only RUNNING ones with `running`)."""
        where, params = [], []
        if board is not None:
            where.append("board = %s")
            params.append(board)
        if running:
            where.append("state = 'RUNNING'")
        query = f"SELECT {_COLUMNS} FROM migration_jobs"
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = await self._cp._fetch("listing jobs", query + " ORDER BY id DESC", params)
        return [_job(row) for row in rows]

    async def claim(self, job_id: int, owner: str, lease_s: float) -> Job:
        """Makes `owner` the job's owner for `lease_s` seconds: it already is, or the lease has passed. Raises
        `NotFound`, `JobBusy`, or `RankshardError` for a job that has ended."""
        async with self._cp._transaction(f"claiming job {job_id}") as conn:
            job = await _get(conn, job_id, lock=True)
            if job.state is not JobState.RUNNING:
                raise RankshardError(f"{job.describe()} has ended: {job.state}")
            cur = await conn.execute(
                "UPDATE migration_jobs SET owner = %s, lease_until = now() + make_interval(secs => %s),"
                " updated_at = now() WHERE id = %s AND (owner = %s OR owner IS NULL OR lease_until < now())"
                " RETURNING id",
                (owner, lease_s, job_id, owner),
            )
            if not await cur.fetchall():
                raise JobBusy(
                    f"{job.describe()} is being run by {job.owner} (its claim holds until {job.lease_until:%H:%M:%S}"
                    " UTC); wait for it, or resume it once that has passed"
                )
            return await _get(conn, job_id)

    async def advance(self, job: Job, owner: str, lease_s: float, **changes: Any) -> Job:
        """Writes `changes` (step, copied, total, dirty, freeze_ms, scan_cursor, error) if `owner` still owns the
        job, renewing its lease; raises `JobBusy` when it does not."""
        async with self._cp._transaction(f"recording the progress of job {job.id}") as conn:
            return await _advance(conn, job, owner, lease_s, changes)

    async def switch_map(
        self, job: Job, owner: str, lease_s: float, expected_epoch: int, shards: Sequence[Shard], step: JobStep
    ) -> tuple[Job, ShardMap]:
        """The board's shards replaced (compare-and-set on `expected_epoch`, announced) and the job at `step`, in
        one transaction. Raises what `ControlPlane.replace_shards` and `advance` raise."""
        from ._store import replace_shards_in

        async with self._cp._transaction(f"switching the map of {job.describe()}") as conn:
            job = await _advance(conn, job, owner, lease_s, {"step": step})
            new_map = await replace_shards_in(conn, job.board, expected_epoch, shards)
            return job, new_map

    async def end(self, job: Job, owner: str, state: JobState, error: str | None = None) -> Job:
        """Ends the job (DONE or ABORTED) and frees its shards."""
        async with self._cp._transaction(f"ending job {job.id}") as conn:
            step = JobStep.DONE if state is JobState.DONE else job.step
            job = await _advance(conn, job, owner, 0, {"state": str(state), "step": step, "error": error})
            await conn.execute("DELETE FROM job_shards WHERE job = %s", (job.id,))
            return job


async def _lock_shard(conn: AsyncConnection, board: str, shard: str, job_id: int) -> None:
    cur = await conn.execute(
        "INSERT INTO job_shards (board, shard, job) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING job",
        (board, shard, job_id),
    )
    if await cur.fetchall():
        return
    cur = await conn.execute("SELECT job FROM job_shards WHERE board = %s AND shard = %s", (board, shard))
    holder = (await cur.fetchall())[0][0]
    raise JobConflict(shard, await _get(conn, holder))


_CHANGEABLE = frozenset({"step", "state", "copied", "total", "dirty", "freeze_ms", "scan_cursor", "error"})


async def _advance(conn: AsyncConnection, job: Job, owner: str, lease_s: float, changes: dict[str, Any]) -> Job:
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise ValueError(f"not a job column: {sorted(unknown)}")
    sets = "".join(f", {name} = %s" for name in changes)
    values = [str(v) if name in ("step", "state") else v for name, v in changes.items()]
    try:
        cur = await conn.execute(
            f"UPDATE migration_jobs SET updated_at = now(), lease_until = now() + make_interval(secs => %s){sets}"
            " WHERE id = %s AND owner = %s AND state = 'RUNNING' RETURNING id",
            (lease_s, *values, job.id, owner),
        )
    except psycopg.errors.DataError as exc:
        raise ValueError(f"job {job.id}: bad progress value: {exc}") from exc
    if not await cur.fetchall():
        current = await _get(conn, job.id)
        raise JobBusy(f"{current.describe()} is no longer this process's: owner {current.owner}, {current.state}")
    return await _get(conn, job.id)


async def _get(conn: AsyncConnection, job_id: int, lock: bool = False) -> Job:
    query = f"SELECT {_COLUMNS} FROM migration_jobs WHERE id = %s" + (" FOR UPDATE" if lock else "")
    cur = await conn.execute(query, (job_id,))
    rows = await cur.fetchall()
    if not rows:
        raise NotFound(f"job {job_id} not found")
    return _job(rows[0])


def _job(row: tuple[Any, ...]) -> Job:
    (id_, board, kind, state, step, source, target, node, params, copied, total, dirty, freeze_ms, cursor, owner,
     lease, error, created, updated) = row  # fmt: skip
    return Job(
        id_, board, JobKind(kind), JobState(state), JobStep(step), source, target, node,
        CarvePlan.from_json(params), copied, total, dirty, freeze_ms, cursor, owner, lease, error, created, updated,
    )  # fmt: skip
