"""Running a rebalancing job: CARVE(S, R -> T on node N), step by step (docs/architecture.md, "Rebalancing").

Every step is idempotent and recorded in the job's row before the next begins, so a job interrupted anywhere
(Ctrl-C, SIGKILL, a lost connection) is carried on from its row by running it again (`Carver.run`): up to the
freeze it goes on, or is rolled back (`Carver.abort`) to a *new* generation of the source, never the old
descriptor; from COMMITTED on it only rolls forward.

Each step's node work is in a script of its own (``scripts/carve_*.lua``); this module orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from rankshard.shard_map import (
    ControlPlane,
    Job,
    JobKind,
    JobState,
    JobStep,
    RankshardError,
    Shard,
    ShardMap,
    ShardState,
    StaleMap,
)

from . import _replies as replies
from ._carve_parts import (
    JobFailed,
    Parts,
    clear_shard,
    read_source,
    settle_users,
    target_descriptor,
    write_target,
    zrange,
)
from ._carve_verify import counts_agree
from ._client import NodeClient
from ._keys import (
    carve_key,
    descriptor,
    descriptor_key,
    dirty_key,
    floor_key,
    moves_key,
    shard_key,
    stored_range,
    taken_key,
)
from ._layout import BoardLayout, Cluster
from ._scripts import CARVE_CLEANUP, CARVE_DESCRIBE, CARVE_FLOOR, CARVE_TAKE, ClearMode
from ._sweep import settle_member

log = logging.getLogger("rankshard.jobs")

BATCH = 1000
"""Members per copy, catch-up and cleanup round: one script call of about a millisecond on the node."""
CATCH_UP_FREEZES_BELOW = 1000
"""Catch-up stops and the source freezes once fewer members than this are dirty (Mongo's and Vitess's lag
check): the freeze then drains them in well under its deadline."""
FREEZE_ATTEMPTS = 3
"""Freezes that may end by their deadline before the job gives up and rolls back."""
BARRIER_TIMEOUT = 60.0
"""Seconds the job waits for writes committed under an older map to finish."""

StepHook = Callable[[Job], None]
"""Called with the job's row each time it is recorded (a step begins, progress is saved). Raising from it stops
the job right there, as a crash would (the tests' way to interrupt a job at every step)."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """A batch of the copy: the scan's cursor after it, its members in R and how the source holds them."""

    cursor: str
    users: list[str]
    versions: list[str]
    """The version-register key of each member (the same on every node)."""
    state: list[tuple[str, int]]
    restarted: bool = False
    """The source's node restarted: the scan began again, and what was copied is counted again."""


class Carver:
    """Runs jobs for one process (`owner`), holding each job's lease while it works on it."""

    def __init__(
        self,
        control_plane: ControlPlane,
        cluster: Cluster,
        owner: str,
        *,
        lease_s: float = 30.0,
        freeze_ms: int = 2000,
        pace: float = 0.5,
        on_step: StepHook | None = None,
    ) -> None:
        self.cp = control_plane
        self.cluster = cluster
        self.owner = owner
        self.lease_s = lease_s
        self.freeze_ms = freeze_ms
        self.pace = pace
        """The share of the time the copy may keep the nodes busy (see `_rest`). The catch-up runs flat out: it
        must outrun the board's writes to the source to converge, and its work is in proportion to them."""
        self.on_step = on_step
        self._saved_at = 0.0

    # ---- the job as a whole ---------------------------------------------------------------------------------

    async def run(self, job: Job) -> Job:
        """Carries `job` (claimed first) to DONE, or to ABORTED when it had to roll back; returns its last row.
        Raises `JobBusy` (another process runs it), `JobFailed`, `NodeError`, `ControlPlaneError`: the job then
        stays where its row says, to be run again."""
        job = await self.cp.jobs.claim(job.id, self.owner, self.lease_s)
        async with self._leased(job):
            if job.step is JobStep.ABORTING:
                return await self._rollback(job)
            for step in _FORWARD[_FORWARD.index(job.step) :]:
                job = await _STEPS[step](self, job)
                if job.state is not JobState.RUNNING:
                    return job
            return job

    async def abort(self, job: Job) -> Job:
        """Rolls `job` back (only before COMMITTED): the source serves as before under a new generation, the
        target is cleared. Raises `JobFailed` for a committed job."""
        job = await self.cp.jobs.claim(job.id, self.owner, self.lease_s)
        if job.step.committed:
            raise JobFailed(f"{job.describe()} is past its commit: it can only be finished (run it again)")
        async with self._leased(job):
            return await self._rollback(await self._record(job, step=JobStep.ABORTING))

    @contextlib.asynccontextmanager
    async def _leased(self, job: Job) -> AsyncIterator[None]:
        """The job's lease renewed every third of its length while the body runs, whatever step it is in (a long
        copy, barrier or cleanup records nothing for a while): another process takes a job over only once its
        runner is gone."""

        # Stopped by an event, not by a cancellation alone: on Python 3.11 `asyncio.wait_for` (the connection pool
        # waits for a connection with it) drops a cancellation that arrives as the wait completes, and a loop that
        # only a cancellation ends then renews, and logs, for ever.
        done = asyncio.Event()

        async def renew() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), self.lease_s / 3)
                    return
                try:
                    await self.cp.jobs.advance(job, self.owner, self.lease_s)
                except RankshardError as exc:  # the next step's own record says what is wrong
                    log.warning("%s: could not renew its lease: %s", job.describe(), exc)

        renewal = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            done.set()
            await renewal  # a renewal in flight ends within the control plane's timeout

    # ---- steps ----------------------------------------------------------------------------------------------

    async def _plan(self, job: Job) -> Job:
        return await self._record(job, step=JobStep.PREPARE)

    async def _prepare(self, job: Job) -> Job:
        """The target exists and holds nothing in R; the control plane and the source's node say MIGRATING."""
        layout = await self._layout(job.board)
        source = _find(layout.map, job.source)
        if source is None or (source.state is ShardState.ACTIVE and source.generation != job.plan.source_generation):
            raise JobFailed(f"{job.describe()}: shard {job.source} changed since the job was planned; plan it again")
        parts = self._parts(job, layout, source)
        await self._prepare_target(job, parts)
        if source.state is ShardState.ACTIVE:
            migrating = dataclasses.replace(
                source, state=ShardState.MIGRATING, generation=source.generation + 1, pending_cut=job.plan.cut
            )
            shards = [migrating if s.id == source.id else s for s in layout.map.shards]
            job, new_map = await self.cp.jobs.switch_map(
                job, self.owner, self.lease_s, layout.map.epoch, shards, JobStep.PREPARE
            )
            self._notify(job)
            layout = BoardLayout(layout.config, new_map)
            source = migrating
        active = _source_descriptor(job, ShardState.ACTIVE, 0)
        await self._describe(parts.source_node, job, source.id, descriptor(source), *parts.carved, active)
        return await self._record(job, step=JobStep.FLOOR)

    async def _floor(self, job: Job) -> Job:
        """Raises the epoch floor to the job's map on every index node, then finishes every write committed before
        it (their crossings were decided on the cuts of before: docs/architecture.md, the epoch floor)."""
        layout = await self._layout(job.board)
        index_nodes = [self.cluster.node(n) for n in dict.fromkeys(self.cluster.slots.owners)]
        key = floor_key(job.board)
        raised = await asyncio.gather(*(n.run(CARVE_FLOOR, [key], [layout.map.epoch]) for n in index_nodes))
        deadline = time.monotonic() + BARRIER_TIMEOUT
        for node, since in zip(index_nodes, raised, strict=True):
            await self._settle_before(layout, node, int(_number(node.id, since)), deadline)
        return await self._record(job, step=JobStep.COPY)

    async def _copy(self, job: Job) -> Job:
        """Every member of S in R written into T, with its version; the scan's cursor is saved as it goes. The
        source is read a batch ahead while the target writes the one before (the nodes work in parallel); a
        batch's cursor is saved only once the target holds it.

        A ZSCAN cursor means something only to the server process that gave it (a restarted node hashes with
        another seed), so it is saved with that process's run id, read in the same round trip as each batch: a
        cursor of another run starts the scan over (copies are idempotent)."""
        parts = self._parts(job, await self._layout(job.board))
        copied = job.copied
        if job.total == 0:
            total = await parts.source_node.command("ZCOUNT", *zrange(job.board, job.source, parts.carved))
            job = await self._record(job, total=int(total))
        batches: asyncio.Queue[_Batch | Exception | None] = asyncio.Queue(maxsize=2)
        scan = asyncio.get_running_loop().create_task(self._scan_source(parts, job, batches))
        try:
            while (batch := await batches.get()) is not None:
                if isinstance(batch, Exception):
                    raise batch  # the scan's error as it is (a NodeUnavailable, say): the job stays at COPY
                started = time.monotonic()
                if batch.restarted:
                    copied = 0
                if batch.users:
                    copied += await write_target(parts, job, batch.users, batch.versions, batch.state)
                job = await self._save(job, scan_cursor=batch.cursor, copied=copied)
                await self._rest(started)
        finally:
            scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scan
        return await self._record(job, step=JobStep.CATCHUP, scan_cursor="0", copied=copied)

    async def _scan_source(self, parts: Parts, job: Job, batches: asyncio.Queue[_Batch | Exception | None]) -> None:
        """ZSCAN of S from the job's cursor, each batch's members in R read as they stand, into `batches` (with
        the cursor to save after it, ``run@cursor``), then None; an error ends it, put in `batches` for the copy
        to raise."""
        try:
            await self._scan_batches(parts, job, batches)
        except Exception as exc:
            await batches.put(exc)

    async def _scan_batches(self, parts: Parts, job: Job, batches: asyncio.Queue[_Batch | Exception | None]) -> None:
        run, _, cursor = job.scan_cursor.rpartition("@")
        lo, hi = int(parts.carved[0]), int(parts.carved[1])
        key = shard_key(job.board, job.source)
        restarted = False
        while True:
            info, raw = await parts.source_node.commands([("INFO", "server"), ("ZSCAN", key, cursor, "COUNT", BATCH)])
            if _run_id(parts.source_node.id, info) != run and cursor != "0":
                log.info("%s: the source's node restarted during the copy; copying from the start", job.describe())
                run, cursor, restarted = _run_id(parts.source_node.id, info), "0", True
                continue
            run = _run_id(parts.source_node.id, info)
            cursor, rows = _scanned(parts.source_node.id, raw)
            users = [u for u, s in rows if lo <= s < hi]
            versions = [parts.layout.versions_key(u) for u in users]
            state = await read_source(parts, job, users, versions) if users else []
            await batches.put(_Batch(f"{run}@{cursor}", users, versions, state, restarted))
            restarted = False
            if cursor == "0":
                await batches.put(None)
                return

    async def _catch_up(self, job: Job) -> Job:
        """The members written at S since the job began settled in T, until few are left."""
        parts = self._parts(job, await self._layout(job.board))
        dirty = await self._drain(parts, job, until=CATCH_UP_FREEZES_BELOW)
        return await self._record(job, step=JobStep.FREEZE, dirty=dirty)

    async def _freeze(self, job: Job) -> Job:
        """S frozen (writes wait, reads go on), the rest of its dirty set settled, R's counts compared, then S
        COMMITTING and the new map committed: the point of no return. A freeze that lapses is tried again, and so is
        one whose counts differ, once it has thawed: a member crossing from S into a merge target is written there
        (out of R) before S, frozen, lets it go, so the counts differ until that crossing finishes."""
        layout = await self._layout(job.board)
        source = _find(layout.map, job.source)
        if source is None:
            raise JobFailed(f"{job.describe()}: shard {job.source} is not in the map")
        parts = self._parts(job, layout, source)
        frozen = descriptor(dataclasses.replace(source, state=ShardState.FROZEN))
        committing = descriptor(dataclasses.replace(source, state=ShardState.COMMITTING))
        error = "the freeze kept lapsing"
        for _ in range(FREEZE_ATTEMPTS):
            started = time.monotonic()
            state = await self._state(parts.source_node, job.board, job.source)
            if state != ShardState.COMMITTING:
                await self._describe(
                    parts.source_node, job, job.source, frozen, str(self.freeze_ms), descriptor(source)
                )
                await self._drain(parts, job, until=1)
                if not await counts_agree(self.cluster, parts, job):
                    error = "the target's count of the range kept differing from the source's"
                    log.info("%s: the counts of the range differ; trying again once the freeze lapses", job.describe())
                    await asyncio.sleep(self.freeze_ms / 1000)  # the freeze's deadline, set at most this long ago
                    continue
                if not await self._try_describe(parts.source_node, job, job.source, committing, frozen):
                    log.info("%s: the freeze lapsed before the commit; trying again", job.describe())
                    continue
            freeze_ms = round((time.monotonic() - started) * 1000)
            job = await self._record(job, freeze_ms=freeze_ms, dirty=0)
            job, _ = await self.cp.jobs.switch_map(
                job, self.owner, self.lease_s, layout.map.epoch, _committed_map(job, layout.map), JobStep.COMMITTED
            )
            self._notify(job)
            return job
        return await self._rollback(await self._record(job, step=JobStep.ABORTING, error=error))

    async def _activate(self, job: Job) -> Job:
        """The source retired (or shrunk), then the target made ACTIVE: no reader ever sees both."""
        layout = await self._layout(job.board)
        source_node = self.cluster.node(job.plan.source_node)
        target_node = self.cluster.node(job.target_node)
        committing = _source_descriptor(job, ShardState.COMMITTING)
        if job.kind is JobKind.SPLIT:
            await self._describe(source_node, job, job.source, layout.descriptors[job.source], committing)
        else:
            await self._describe(source_node, job, job.source, "", committing)
        await self._describe(target_node, job, job.target, layout.descriptors[job.target], target_descriptor(job))
        return await self._record(job, step=JobStep.CLEANUP)

    async def _cleanup(self, job: Job) -> Job:
        """What the job left in the source's key (invisible to every count) deleted in batches."""
        board, node = job.board, self.cluster.node(job.plan.source_node)
        layout = await self._layout(board)
        carved = stored_range(job.plan.lower, job.plan.upper, layout.descending)
        away = "1" if job.kind is not JobKind.SPLIT and job.plan.source_node != job.target_node else "0"
        while True:
            raw = await node.command("ZRANGE", *zrange(board, job.source, carved), "BYSCORE", "LIMIT", 0, BATCH)
            names = replies.texts(node.id, "ZRANGE", raw)
            if not names:
                break
            keys = [shard_key(board, job.source), *(layout.versions_key(u) for u in names)]
            await node.run(CARVE_CLEANUP, keys, [*carved, away, *names])
        await node.command(
            "DEL", carve_key(board, job.source), dirty_key(board, job.source), taken_key(board, job.source)
        )
        return await self.cp.jobs.end(job, self.owner, JobState.DONE)

    # ---- rolling back ---------------------------------------------------------------------------------------

    async def _rollback(self, job: Job) -> Job:
        """The source ACTIVE again under a new generation (control plane first, then its node), the target
        cleared of the range, the job ABORTED. Each part is idempotent."""
        layout = await self._layout(job.board)
        source = _find(layout.map, job.source)
        if source is not None and source.state is ShardState.MIGRATING:
            restored = dataclasses.replace(
                source, state=ShardState.ACTIVE, generation=source.generation + 1, pending_cut=None
            )
            shards = [restored if s.id == source.id else s for s in layout.map.shards]
            job, new_map = await self.cp.jobs.switch_map(
                job, self.owner, self.lease_s, layout.map.epoch, shards, JobStep.ABORTING
            )
            self._notify(job)
            layout, source = BoardLayout(layout.config, new_map), restored
        if source is not None:
            # From any descriptor the job may have left (a source COMMITTING without the control plane's commit is
            # rolled back too: the commit is the point of no return, not the node's state).
            node = self.cluster.node(source.node)
            states = (ShardState.MIGRATING, ShardState.FROZEN, ShardState.COMMITTING)
            left = [_source_descriptor(job, state) for state in states]
            await self._try_describe(
                node, job, source.id, descriptor(source), _source_descriptor(job, ShardState.ACTIVE, 0), *left
            )
        await self._clear_target(job, layout)
        return await self.cp.jobs.end(job, self.owner, JobState.ABORTED, job.error or "rolled back")

    async def _clear_target(self, job: Job, layout: BoardLayout) -> None:
        node = self.cluster.node(job.target_node)
        if job.kind is JobKind.MERGE:
            carved = stored_range(job.plan.lower, job.plan.upper, layout.descending)
            await clear_shard(node, job.board, job.target, ClearMode.RANGE, *carved)
        else:
            await clear_shard(node, job.board, job.target, ClearMode.DROP)

    # ---- parts ----------------------------------------------------------------------------------------------

    async def _prepare_target(self, job: Job, parts: Parts) -> None:
        """T holds nothing in R (leftovers of an earlier job there are range-deleted first) and, when new, is
        INCOMING: filled by the job, read by nobody until the map names it."""
        await clear_shard(parts.target_node, job.board, job.target, ClearMode.RANGE, *parts.carved)
        if job.kind is not JobKind.MERGE:
            await self._describe(parts.target_node, job, job.target, target_descriptor(job), "")

    async def _settle_before(self, layout: BoardLayout, node: NodeClient, since_ms: int, deadline: float) -> None:
        """Finishes every write marked on `node` at or before `since_ms` (its clock) and waits until none is left."""
        while True:
            raw = await node.command("ZRANGEBYSCORE", moves_key(layout.board), "-inf", since_ms, "LIMIT", 0, 200)
            users = replies.texts(node.id, "ZRANGEBYSCORE", raw)
            if not users:
                return
            if time.monotonic() > deadline:
                raise JobFailed(f"writes committed before the floor on node {node.id} did not finish; run it again")
            for user in users:
                try:
                    await settle_member(self.cluster, layout, user)
                except StaleMap:  # the member's shard is another job's: its sweeper or writer finishes it
                    await asyncio.sleep(0.05)

    async def _drain(self, parts: Parts, job: Job, until: int) -> int:
        """Takes members off the dirty set and settles them in T until fewer than `until` are left; returns how
        many were left."""
        board, node = job.board, parts.source_node
        keys = [dirty_key(board, job.source), taken_key(board, job.source)]
        while True:
            raw = await node.run(CARVE_TAKE, keys, [BATCH])
            taken, left = _taken(node.id, raw)
            if taken:
                await settle_users(parts, job, taken)
                await node.command("SREM", keys[1], *taken)
            if not taken and left < until:
                return left
            if taken:
                job = await self._save(job, dirty=left)

    async def _state(self, node: NodeClient, board: str, shard_id: str) -> str:
        raw = await node.command("GET", descriptor_key(board, shard_id))
        return raw.rsplit("|", 1)[-1] if isinstance(raw, str) else ""

    async def _describe(self, node: NodeClient, job: Job, shard_id: str, target: str, *rest: str) -> None:
        """`carve_describe` of `shard_id`'s descriptor on `node`, which must succeed; raises `JobFailed`."""
        if not await self._try_describe(node, job, shard_id, target, *rest):
            actual = await node.command("GET", descriptor_key(job.board, shard_id))
            raise JobFailed(
                f"{job.describe()}: node {node.id} holds {actual!r} for {shard_id}, not what the job expects"
            )

    async def _try_describe(self, node: NodeClient, job: Job, shard_id: str, target: str, *rest: str) -> bool:
        keys = [
            descriptor_key(job.board, shard_id),
            carve_key(job.board, shard_id),
            dirty_key(job.board, shard_id),
            taken_key(job.board, shard_id),
        ]
        raw = await node.run(CARVE_DESCRIBE, keys, [target, *rest])
        return _described(node.id, raw)

    async def _rest(self, started: float) -> None:
        """After a batch begun at `started`: a rest that keeps the job's share of the nodes' time to `pace`. The
        nodes run one command at a time, so a batch script holds up the board's calls behind it; without rests a
        copy queues calls behind it back to back."""
        if self.pace < 1.0:
            await asyncio.sleep((time.monotonic() - started) * (1.0 - self.pace) / self.pace)

    def _parts(self, job: Job, layout: BoardLayout, source: Shard | None = None) -> Parts:
        source = source or _find(layout.map, job.source)
        if source is None:
            raise JobFailed(f"{job.describe()}: shard {job.source} is not in the map")
        carved = stored_range(job.plan.lower, job.plan.upper, layout.descending)
        return Parts(
            layout, source, carved, self.cluster.node(job.plan.source_node), self.cluster.node(job.target_node)
        )

    async def _layout(self, board: str) -> BoardLayout:
        return BoardLayout(await self.cp.get_board(board), await self.cp.shard_map(board))

    async def _record(self, job: Job, **changes: object) -> Job:
        job = await self.cp.jobs.advance(job, self.owner, self.lease_s, **changes)
        self._notify(job)
        return job

    async def _save(self, job: Job, **changes: object) -> Job:
        """Progress kept in the row at most a few times a second (every round would be a PostgreSQL write per
        millisecond of node work); the lease is renewed with it."""
        if time.monotonic() - self._saved_at < 0.25:
            return dataclasses.replace(job, **changes)  # type: ignore[arg-type]  # the columns `advance` takes
        self._saved_at = time.monotonic()
        return await self._record(job, **changes)

    def _notify(self, job: Job) -> None:
        if self.on_step is not None:
            self.on_step(job)


async def finish_abandoned(
    control_plane: ControlPlane, cluster: Cluster, owner: str, *, roll_back: bool = False
) -> list[Job]:
    """Finishes every running job past its commit whose owner's lease has passed (a CLI that died there leaves its
    shards refusing writes until the new ones are active: routers' sweepers run this). With `roll_back`, jobs not
    yet committed are rolled back too (`rankshard repair`). Returns the jobs it ended; one that fails is left as
    its row says, for the next round. Raises `ControlPlaneError`."""
    ended = []
    now = datetime.now(UTC)
    for job in await control_plane.jobs.list(running=True):
        if job.lease_until is not None and job.lease_until > now:
            continue
        if not job.step.committed and not roll_back:
            continue
        carver = Carver(control_plane, cluster, owner)
        try:
            ended.append(await (carver.run(job) if job.step.committed else carver.abort(job)))
        except RankshardError as exc:
            log.warning("%s could not be finished: %s", job.describe(), exc)
    return ended


_FORWARD = (
    JobStep.PLAN,
    JobStep.PREPARE,
    JobStep.FLOOR,
    JobStep.COPY,
    JobStep.CATCHUP,
    JobStep.FREEZE,
    JobStep.COMMITTED,
    JobStep.CLEANUP,
)


_STEPS = {
    JobStep.PLAN: Carver._plan,
    JobStep.PREPARE: Carver._prepare,
    JobStep.FLOOR: Carver._floor,
    JobStep.COPY: Carver._copy,
    JobStep.CATCHUP: Carver._catch_up,
    JobStep.FREEZE: Carver._freeze,
    JobStep.COMMITTED: Carver._activate,
    JobStep.CLEANUP: Carver._cleanup,
}


def _find(shard_map: ShardMap, shard_id: str) -> Shard | None:
    return next((s for s in shard_map.shards if s.id == shard_id), None)


def _source_descriptor(job: Job, state: ShardState, generation_offset: int = 1) -> str:
    """The source's descriptor in `state`: under the job's generation (the planned one + 1), or as planned."""
    plan = job.plan
    shard = Shard(
        job.source,
        plan.source_lower,
        plan.source_upper,
        plan.source_node,
        state,
        plan.source_generation + generation_offset,
    )
    return descriptor(shard)


def _committed_map(job: Job, current: ShardMap) -> list[Shard]:
    """The board's shards once the job commits."""
    out: list[Shard] = []
    for s in current.shards:
        if s.id == job.source:
            if job.kind is JobKind.SPLIT:
                assert job.plan.cut is not None  # a split always has one
                kept = Shard(s.id, s.lower, job.plan.cut, s.node, ShardState.ACTIVE, s.generation + 1)
                moved = Shard(job.target, job.plan.cut, s.upper, s.node, ShardState.ACTIVE, job.plan.target_generation)
                out += (kept, moved)
            elif job.kind is JobKind.MOVE:
                out.append(
                    Shard(job.target, s.lower, s.upper, job.target_node, ShardState.ACTIVE, job.plan.target_generation)
                )
        elif s.id == job.target and job.kind is JobKind.MERGE:
            # The source is the target's neighbour above or below: the target's range grows over it. (Two unbounded
            # ends are both None, and do not meet.)
            above = s.upper is not None and s.upper == job.plan.lower
            lower, upper = (s.lower, job.plan.upper) if above else (job.plan.lower, s.upper)
            out.append(Shard(s.id, lower, upper, s.node, ShardState.ACTIVE, s.generation + 1))
        else:
            out.append(s)
    return out


def _number(node: str, raw: object) -> int:
    if type(raw) is not int:
        raise replies.unexpected(node, "carve_floor", raw)
    return raw


def _scanned(node: str, raw: object) -> tuple[str, list[tuple[str, int]]]:
    if type(raw) is list and len(raw) == 2 and type(raw[0]) is str:
        return raw[0], replies.scored_members(node, "ZSCAN", raw[1])
    raise replies.unexpected(node, "ZSCAN", raw)


def _run_id(node: str, raw: object) -> str:
    """The server process's run id, from INFO server."""
    if isinstance(raw, str):
        for line in raw.splitlines():
            if line.startswith("run_id:"):
                return line[len("run_id:") :].strip()
    raise replies.unexpected(node, "INFO", raw)


def _taken(node: str, raw: object) -> tuple[list[str], int]:
    if type(raw) is list and len(raw) == 2 and type(raw[0]) is list and type(raw[1]) is int:
        return replies.texts(node, "carve_take", raw[0]), raw[1]
    raise replies.unexpected(node, "carve_take", raw)


def _described(node: str, raw: object) -> bool:
    if raw == ["ok"]:
        return True
    if type(raw) is list and len(raw) == 2 and raw[0] == "stale" and type(raw[1]) is str:
        return False
    raise replies.unexpected(node, "carve_describe", raw)
