"""The control plane: nodes, index slots, boards and their shard maps, stored in PostgreSQL.

`ControlPlane` is the only way in. Every psycopg (and psycopg_pool) exception is translated here into the
domain tree of `shard_map._errors`: `ControlPlaneError` (naming the control plane and what was being done;
`SchemaMissing` when the schema is not there), `AlreadyExists`, `NotFound` or `NodeInUse`. Every change to a
board's shard map bumps ``boards.epoch`` and announces ``board:epoch`` on the ``rankshard_epoch`` channel in
the same transaction, so a listener never hears of an epoch it cannot read.

A board is CREATING, ACTIVE, DELETING or DELETED (migration 0003); every read here sees ACTIVE boards only,
so a board half created or half deleted is unknown to routers and listings.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Self, TypedDict

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from ._errors import AlreadyExists, ControlPlaneError, InvalidArgument, NotFound
from ._job_store import JobStore
from ._limits import check_board_name, check_expected_members, check_score
from ._migrate import SchemaMissing, apply_migrations, missing_versions
from ._model import (
    NUM_SLOTS,
    BoardConfig,
    Buckets,
    Operator,
    Shard,
    ShardMap,
    ShardState,
    SlotTable,
    SortOrder,
    check_boundaries,
    ranges_for,
    tiling_problems,
)
from ._nodes import NODE_QUERY, Node, delete_node, insert_node, update_node_state

log = logging.getLogger(__name__)

EPOCH_CHANNEL = "rankshard_epoch"
"""NOTIFY channel; the payload is ``board + ':' + epoch`` (split at the last colon: names may hold colons)."""

LISTENER_NAME = "rankshard-epoch-listener"
"""``application_name`` of the connection behind `ControlPlane.epoch_changes`."""

_POOL_NAME = "rankshard-control-plane"
_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0  # listener reconnect backoff, seconds
_PROBE_EVERY = 30.0  # seconds without a notification before the listener checks its connection
_SHARD_NUMBER = re.compile(r"s(\d{1,9})")


class _Keepalives(TypedDict):
    """libpq's TCP keepalive settings: a connection to a host that vanished fails within about a minute
    instead of hanging. A TypedDict so that ``**`` into psycopg's connect keeps each value's type."""

    keepalives: int
    keepalives_idle: int
    keepalives_interval: int
    keepalives_count: int


_KEEPALIVES = _Keepalives(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rankshard_control_plane_deadline", default=None
)
"""Loop time by which control-plane calls in this context must have answered (see `control_plane_deadline`)."""


@contextlib.contextmanager
def control_plane_deadline(seconds: float) -> Iterator[None]:
    """Bounds every `ControlPlane` call made in this context (and in tasks started from it) to `seconds` from now.

    A call that cannot finish in time raises `ControlPlaneError` saying so, rather than waiting for the pool's own
    timeout: a caller with a deadline (a gRPC call) then answers UNAVAILABLE before its client gives up.
    """
    token = _DEADLINE.set(asyncio.get_running_loop().time() + max(0.0, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


_MAP_QUERY = """
    SELECT b.name, b.epoch, s.id, s.lower, s.upper, s.node, s.state, s.generation, s.pending_cut
    FROM boards AS b LEFT JOIN shards AS s ON s.board = b.name WHERE b.state = %s
"""
_BOARD_QUERY = (
    "SELECT name, sort_order, operator, expected_members, index_buckets, version_buckets FROM boards WHERE state = %s"
)
_ACTIVE, _CREATING = "ACTIVE", "CREATING"
_MAP_ORDER = ' ORDER BY b.name COLLATE "C", s.lower NULLS FIRST'


class StaleEpoch(ControlPlaneError):
    """A compare-and-set on a shard map lost: the board's epoch is no longer the one the caller read."""

    def __init__(self, board: str, expected: int, actual: int) -> None:
        super().__init__(
            f"control plane: the shard map of leaderboard {board!r} is at epoch {actual}, "
            f"not {expected}; reload it and retry"
        )
        self.board = board
        self.expected = expected
        self.actual = actual


class ControlPlane:
    """A pool of connections to the control plane database. Open with `ControlPlane.open`."""

    def __init__(self, dsn: str, pool: AsyncConnectionPool, timeout: float) -> None:
        self._dsn = dsn
        self._pool = pool
        self._timeout = timeout
        self._where = _describe(dsn)
        self.migrations_applied: tuple[int, ...] = ()
        """The schema versions `open` applied (none when the schema was current, or with ``migrate=False``)."""

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        max_size: int = 4,
        timeout: float = 10.0,  # noqa: ASYNC109 -- configures the pool (every later call's wait), not this call
        migrate: bool = True,
    ) -> ControlPlane:
        """Connects, applies pending schema migrations and opens the pool.

        With ``migrate=False`` nothing is written: the schema is only checked, and `SchemaMissing` is raised
        if the database lacks it or some of its migrations (the way for a command that must not create
        tables in whatever database a DSN names). Raises `ControlPlaneError` if the database cannot be
        reached within `timeout` seconds or refuses.
        """
        pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            name=_POOL_NAME,
            kwargs={"autocommit": True, "application_name": _POOL_NAME, **_KEEPALIVES},
            check=AsyncConnectionPool.check_connection,  # a connection PostgreSQL dropped is replaced
        )
        plane = cls(dsn, pool, timeout)
        try:
            await plane._prepare_schema(migrate)
            with plane._translated("opening the connection pool"):
                await pool.open(wait=True, timeout=timeout)
        except BaseException:
            await pool.close()
            raise
        return plane

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def where(self) -> str:
        """``host:port/dbname`` of the database, without credentials."""
        return self._where

    async def _prepare_schema(self, migrate: bool) -> None:
        # A direct connection first: its errors say why (bad password, no such database), where a pool
        # that cannot fill only says it timed out.
        with self._translated("applying schema migrations" if migrate else "reading the schema version"):
            async with await self._connect() as conn:
                if migrate:
                    self.migrations_applied = tuple(await apply_migrations(conn))
                    return
                missing, none_applied = await missing_versions(conn)
        if missing:
            raise SchemaMissing(self._where, missing, none_applied=none_applied)

    # ---- nodes ------------------------------------------------------------------------------------------

    async def add_node(self, address: str) -> Node:
        """Registers a data node and assigns its id. Raises `AlreadyExists` if `address` is registered.

        The store does not contact the node: callers check first that it answers (`shard_node`).
        """
        if not address:
            raise InvalidArgument("address", "is required")
        async with self._transaction(f"registering node {address!r}") as conn:
            return await insert_node(conn, address)

    async def remove_node(self, node: str) -> Node:
        """Unregisters a node, named by id or address, that owns no shard and no index slot; returns it.

        Raises `NotFound`, or `NodeInUse` naming what it owns.
        """
        async with self._transaction(f"removing node {node!r}") as conn:
            return await delete_node(conn, node)

    async def set_node_state(self, node: str, state: str) -> Node:
        """Sets the state of a node named by id or address (``ACTIVE``; ``DRAINING``: it gets no new shard);
        returns it. Raises `InvalidArgument` for an empty state, `NotFound`."""
        if not state:
            raise InvalidArgument("state", "is required")
        async with self._transaction(f"setting the state of node {node!r}") as conn:
            return await update_node_state(conn, node, state)

    async def list_nodes(self) -> list[Node]:
        rows = await self._fetch("listing nodes", NODE_QUERY + " ORDER BY seq")
        return [Node(*row) for row in rows]

    async def get_node(self, node_id: str) -> Node:
        """Raises `NotFound` for an unknown id."""
        rows = await self._fetch(f"reading node {node_id!r}", NODE_QUERY + " WHERE id = %s", (node_id,))
        if not rows:
            raise NotFound(f"node {node_id!r} not found")
        return Node(*rows[0])

    # ---- index slots ------------------------------------------------------------------------------------

    async def slot_table(self) -> SlotTable | None:
        """The owner of every index slot, or None before `assign_slots` was first called."""
        rows = await self._fetch("reading the slot table", "SELECT node FROM index_slots ORDER BY slot")
        if not rows:
            return None
        if len(rows) != NUM_SLOTS:
            raise ControlPlaneError(f"control plane ({self._where}): only {len(rows)} slots assigned")
        return SlotTable(tuple(node for (node,) in rows))

    async def assign_slots(self, table: SlotTable) -> None:
        """Records the owner of every slot. Raises `NotFound` if an owner is not a registered node."""
        async with self._transaction("assigning index slots") as conn:
            await _check_nodes(conn, table.owners)
            await conn.execute(
                "INSERT INTO index_slots (slot, node)"
                " SELECT * FROM unnest(%s::integer[], %s::text[])"
                " ON CONFLICT (slot) DO UPDATE SET node = EXCLUDED.node"
                " WHERE index_slots.node <> EXCLUDED.node",
                (list(range(NUM_SLOTS)), list(table.owners)),
            )

    # ---- boards and shard maps --------------------------------------------------------------------------

    async def create_board(self, config: BoardConfig, boundaries: Sequence[int], nodes: Sequence[str]) -> ShardMap:
        """`begin_board` then `activate_board`: for a board whose nodes need nothing installed. Raises as
        `begin_board`."""
        _, shard_map = await self.begin_board(config, boundaries, nodes)
        await self.activate_board(config.name, shard_map.epoch)
        return shard_map

    async def begin_board(
        self, config: BoardConfig, boundaries: Sequence[int], nodes: Sequence[str]
    ) -> tuple[BoardConfig, ShardMap]:
        """Records a CREATING board with shards ``s1``..``sN`` cut at `boundaries` (ascending), owners dealt
        over `nodes` in runs of neighbours from the lowest range up, as evenly as the shards divide (so a member
        crossing into a neighbouring shard mostly stays on its node); nothing reads it until `activate_board`.

        Its epoch is 1, or one above the last of a deleted board of that name (so routers holding that
        board's map reload). A board already CREATING with the same order, operator, expected members and
        boundaries is resumed: its recorded config and map come back. Raises `InvalidArgument` for a bad
        name, order, operator or boundary, `NotFound` for an unknown node, `AlreadyExists` if the name is
        ACTIVE, DELETING, or CREATING with another configuration.
        """
        config = _checked_config(config)
        cuts = check_boundaries(boundaries)
        if not nodes:
            raise InvalidArgument("nodes", "at least one node must own the shards")
        ranges = ranges_for(cuts)
        shards = tuple(
            Shard(f"s{i}", lower, upper, nodes[(i - 1) * len(nodes) // len(ranges)])
            for i, (lower, upper) in enumerate(ranges, start=1)
        )
        name = config.name
        async with self._transaction(f"creating leaderboard {name!r}") as conn:
            cur = await conn.execute("SELECT state, epoch FROM boards WHERE name = %s FOR UPDATE", (name,))
            state, epoch = await cur.fetchone() or ("DELETED", 0)
            if state == _CREATING:
                return await self._resumed(conn, config, cuts)
            if state == "DELETING":
                raise AlreadyExists(f"leaderboard {name!r} is being deleted: run the delete again to finish it")
            if state == _ACTIVE:
                raise AlreadyExists(f"leaderboard {name!r} already exists")
            await conn.execute("DELETE FROM boards WHERE name = %s AND state = 'DELETED'", (name,))
            cur = await conn.execute(
                "INSERT INTO boards (name, sort_order, operator, expected_members, index_buckets, version_buckets,"
                " epoch, next_shard, state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'CREATING')"
                " ON CONFLICT (name) DO NOTHING RETURNING epoch",
                (
                    name,
                    int(config.sort_order),
                    int(config.operator),
                    config.expected_members,
                    config.buckets.index,
                    config.buckets.versions,
                    epoch + 1,
                    len(shards) + 1,
                ),
            )
            if await cur.fetchone() is None:  # a concurrent call inserted it first
                raise AlreadyExists(f"leaderboard {name!r} is being created by another call; retry")
            await _check_nodes(conn, nodes)
            await _insert_shards(conn, name, shards)
        return config, ShardMap(name, epoch + 1, shards)

    async def _resumed(
        self, conn: AsyncConnection, config: BoardConfig, cuts: Sequence[int]
    ) -> tuple[BoardConfig, ShardMap]:
        """The CREATING board of `config.name` as recorded, if `config` and `cuts` are what it was begun with."""
        name = config.name
        cur = await conn.execute(_BOARD_QUERY + " AND name = %s", (_CREATING, name))
        stored = _config(*(await cur.fetchall())[0])
        cur = await conn.execute(_MAP_QUERY + " AND b.name = %s" + _MAP_ORDER, (_CREATING, name))
        shard_map = self._maps(await cur.fetchall())[name]
        if replace(stored, buckets=config.buckets) != config or list(shard_map.boundaries) != list(cuts):
            raise AlreadyExists(
                f"leaderboard {name!r} is half created with another configuration: create it again with the"
                " same one to finish it, or delete it"
            )
        return stored, shard_map

    async def activate_board(self, name: str, epoch: int) -> None:
        """Makes the CREATING board `name` at `epoch` ACTIVE and announces it (again if it is ACTIVE already).

        Raises `NotFound` if that board is gone (deleted meanwhile)."""
        async with self._transaction(f"activating leaderboard {name!r}") as conn:
            cur = await conn.execute(
                "UPDATE boards SET state = 'ACTIVE' WHERE name = %s AND epoch = %s AND state IN ('CREATING', 'ACTIVE')"
                " RETURNING 1",
                (name, epoch),
            )
            if await cur.fetchone() is None:
                raise NotFound(f"leaderboard {name!r} not found (deleted while it was being created)")
            await _notify(conn, name, epoch)

    async def begin_delete(self, name: str) -> None:
        """Hides board `name` (in any state but DELETED) as DELETING: its shards and jobs are dropped, its
        epoch goes up and is announced, so routers forget it; its keys on the nodes stay until removed, then
        `finish_delete`. Raises `NotFound` for an unknown or deleted board."""
        async with self._transaction(f"deleting leaderboard {name!r}") as conn:
            cur = await conn.execute(
                "UPDATE boards SET state = 'DELETING', epoch = epoch + 1 WHERE name = %s AND state <> 'DELETED'"
                " RETURNING epoch",
                (name,),
            )
            if (row := await cur.fetchone()) is None:
                raise NotFound(f"leaderboard {name!r} not found")
            await conn.execute("DELETE FROM shards WHERE board = %s", (name,))
            await conn.execute("DELETE FROM migration_jobs WHERE board = %s", (name,))
            await _notify(conn, name, row[0])

    async def finish_delete(self, name: str) -> None:
        """Records that no node holds keys of the DELETING board `name`: it becomes DELETED, its name free
        (the row stays, keeping the epoch). Raises `NotFound` unless the board is DELETING."""
        rows = await self._fetch(
            f"deleting leaderboard {name!r}",
            "UPDATE boards SET state = 'DELETED' WHERE name = %s AND state = 'DELETING' RETURNING 1",
            (name,),
        )
        if not rows:
            raise NotFound(f"leaderboard {name!r} is not being deleted")

    async def get_board(self, name: str) -> BoardConfig:
        """Raises `NotFound` for an unknown board."""
        rows = await self._fetch(f"reading leaderboard {name!r}", _BOARD_QUERY + " AND name = %s", (_ACTIVE, name))
        if not rows:
            raise NotFound(f"leaderboard {name!r} not found")
        return _config(*rows[0])

    async def list_boards(self) -> list[BoardConfig]:
        """Every board, ordered by name (bytewise)."""
        rows = await self._fetch("listing leaderboards", _BOARD_QUERY + ' ORDER BY name COLLATE "C"', (_ACTIVE,))
        return [_config(*row) for row in rows]

    async def shard_map(self, board: str) -> ShardMap:
        """The board's current shard map. Raises `NotFound` for an unknown board."""
        rows = await self._fetch(
            f"reading the shard map of leaderboard {board!r}",
            _MAP_QUERY + " AND b.name = %s" + _MAP_ORDER,
            (_ACTIVE, board),
        )
        maps = self._maps(rows)
        if board not in maps:
            raise NotFound(f"leaderboard {board!r} not found")
        return maps[board]

    async def shard_maps(self) -> dict[str, ShardMap]:
        """The shard maps of every board, read in one query (one consistent snapshot)."""
        return self._maps(await self._fetch("reading all shard maps", _MAP_QUERY + _MAP_ORDER, (_ACTIVE,)))

    async def replace_shards(self, board: str, expected_epoch: int, shards: Sequence[Shard]) -> ShardMap:
        """Compare-and-set: replaces the board's whole shard list if its epoch is still `expected_epoch`.

        `shards` must tile the score line in ascending order; a kept shard (same id) whose range, node or
        state changes must carry a higher generation, and no generation may go down. The epoch goes up by one
        and the change is announced. Raises `InvalidArgument` for a bad list, `NotFound` for an unknown board
        or node, `StaleEpoch` if the epoch moved.
        """
        async with self._transaction(f"replacing the shards of leaderboard {board!r}") as conn:
            return await replace_shards_in(conn, board, expected_epoch, shards)

    @property
    def jobs(self) -> JobStore:
        """The rebalancing jobs' rows."""
        return JobStore(self)

    async def reserve_shard_ids(self, board: str, count: int = 1) -> list[str]:
        """`count` shard ids never used before on `board` (for splits). Raises `NotFound`."""
        if count < 1:
            raise InvalidArgument("count", f"{count} is below 1")
        rows = await self._fetch(
            f"reserving shard ids on leaderboard {board!r}",
            "UPDATE boards SET next_shard = next_shard + %s WHERE name = %s AND state = 'ACTIVE' RETURNING next_shard",
            (count, board),
        )
        if not rows:
            raise NotFound(f"leaderboard {board!r} not found")
        end = rows[0][0]
        return [f"s{n}" for n in range(end - count, end)]

    # ---- epoch notifications ----------------------------------------------------------------------------

    async def epoch_changes(self) -> AsyncIterator[tuple[str, int]]:
        """Yields ``(board, epoch)`` for every change to a shard map, until the consumer closes it.

        Runs on its own connection (not the pool). On every (re)connect it first yields the current epoch
        of every board, then each announced change: a consumer that reloads a board whenever the epoch is
        above the one it holds misses nothing, even across a lost connection. A lost connection is retried
        with backoff (0.1 s doubling to 5 s) for as long as the consumer keeps iterating.
        """
        delay = _RETRY_FIRST
        while True:
            try:
                conn = await self._connect(LISTENER_NAME)
            except psycopg.Error as exc:
                log.warning("control plane (%s): epoch listener cannot connect: %s", self._where, exc)
            else:
                try:
                    for board_epoch in await _listen(conn):
                        yield board_epoch
                    delay = _RETRY_FIRST
                    while True:
                        async with contextlib.aclosing(conn.notifies(timeout=_PROBE_EVERY)) as notes:
                            async for note in notes:
                                if (change := _parse_payload(note.payload)) is not None:
                                    yield change
                        await conn.execute("SELECT 1")  # quiet for a while: is the connection alive?
                except psycopg.Error as exc:
                    log.warning("control plane (%s): epoch listener disconnected: %s", self._where, exc)
                finally:
                    await conn.close()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _RETRY_MAX)

    # ---- plumbing ---------------------------------------------------------------------------------------

    async def _connect(self, application_name: str = _POOL_NAME) -> AsyncConnection:
        return await AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=max(2, math.ceil(self._timeout)),
            **_KEEPALIVES,
        )

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ControlPlaneError(f"control plane (PostgreSQL at {self._where}): {action} failed: {problem}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[AsyncConnection]:
        async with self._bounded(action) as wait:
            async with self._pool.connection(timeout=wait) as conn, conn.transaction():
                yield conn

    async def _fetch(self, action: str, query: Any, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._bounded(action) as wait:
            async with self._pool.connection(timeout=wait) as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()

    @contextlib.asynccontextmanager
    async def _bounded(self, action: str) -> AsyncIterator[float]:
        """`_translated`, within the context's `control_plane_deadline` (or this plane's own timeout); yields the
        seconds left, for the pool's wait. A query that hangs past them is cancelled."""
        deadline = _DEADLINE.get()
        left = self._timeout if deadline is None else min(self._timeout, deadline - asyncio.get_running_loop().time())
        if left <= 0:
            raise ControlPlaneError(
                f"control plane (PostgreSQL at {self._where}): {action}: no time left in the call's deadline"
            )
        with self._translated(action):
            try:
                async with asyncio.timeout(left) as scope:
                    yield left
            except TimeoutError:
                if not scope.expired():
                    raise
                raise ControlPlaneError(
                    f"control plane (PostgreSQL at {self._where}): {action} did not answer within {left:.1f} s"
                ) from None

    def _maps(self, rows: Iterable[tuple[Any, ...]]) -> dict[str, ShardMap]:
        grouped: dict[str, tuple[int, list[Shard]]] = {}
        try:
            for board, epoch, shard_id, lower, upper, node, state, generation, cut in rows:
                _, shards = grouped.setdefault(board, (epoch, []))
                if shard_id is not None:
                    shards.append(Shard(shard_id, lower, upper, node, ShardState(state), generation, cut))
            return {b: ShardMap(b, epoch, tuple(shards)) for b, (epoch, shards) in grouped.items()}
        except ValueError as exc:
            raise ControlPlaneError(f"control plane ({self._where}) holds a broken map: {exc}") from exc


def _describe(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, without credentials, for error messages."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable DSN"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or '?'}"


def _config(name: str, sort_order: int, operator: int, expected: int, index: int, versions: int) -> BoardConfig:
    return BoardConfig(name, SortOrder(sort_order), Operator(operator), expected, Buckets(index, versions))


_MAX_BUCKETS = 2**31 - 1
"""The columns' integer range."""


def _checked_config(config: BoardConfig) -> BoardConfig:
    name = check_board_name(config.name)
    try:
        order = SortOrder(config.sort_order)
    except ValueError:
        raise InvalidArgument("sort_order", f"{config.sort_order!r} is not a sort order") from None
    try:
        operator = Operator(config.operator)
    except ValueError:
        raise InvalidArgument("operator", f"{config.operator!r} is not an operator") from None
    expected = check_expected_members(config.expected_members)
    for field, count in (("buckets.index", config.buckets.index), ("buckets.versions", config.buckets.versions)):
        if not 1 <= count <= _MAX_BUCKETS:
            raise InvalidArgument(field, f"{count!r} is outside 1..{_MAX_BUCKETS}")
    return BoardConfig(name, order, operator, expected, config.buckets)


def _checked_shards(shards: Sequence[Shard]) -> tuple[Shard, ...]:
    checked = []
    for i, shard in enumerate(shards):
        field = f"shards[{i}]"
        for end, value in (("lower", shard.lower), ("upper", shard.upper)):
            if value is not None:
                check_score(value, f"{field}.{end}")
        if not shard.id or not shard.node:
            raise InvalidArgument(field, "needs an id and a node")
        if shard.generation < 1:
            raise InvalidArgument(f"{field}.generation", f"{shard.generation} is below 1")
        try:
            checked.append(replace(shard, state=ShardState(shard.state)))
        except ValueError:
            raise InvalidArgument(f"{field}.state", f"{shard.state!r} is not a shard state") from None
    if problems := tiling_problems(checked):
        raise InvalidArgument("shards", "; ".join(problems))
    return tuple(checked)


async def replace_shards_in(
    conn: AsyncConnection, board: str, expected_epoch: int, shards: Sequence[Shard]
) -> ShardMap:
    """`ControlPlane.replace_shards` inside the transaction of `conn` (the job store's commits use it too)."""
    new = _checked_shards(shards)
    cur = await conn.execute("SELECT epoch FROM boards WHERE name = %s AND state = 'ACTIVE' FOR UPDATE", (board,))
    if (row := await cur.fetchone()) is None:
        raise NotFound(f"leaderboard {board!r} not found")
    if row[0] != expected_epoch:
        raise StaleEpoch(board, expected_epoch, row[0])
    await _check_generations(conn, board, new)
    await _check_nodes(conn, (s.node for s in new))
    await conn.execute("DELETE FROM shards WHERE board = %s", (board,))
    await _insert_shards(conn, board, new)
    epoch = expected_epoch + 1
    await conn.execute(
        "UPDATE boards SET epoch = %s, next_shard = greatest(next_shard, %s) WHERE name = %s",
        (epoch, _next_shard_number(new), board),
    )
    await _notify(conn, board, epoch)
    return ShardMap(board, epoch, new)


async def _check_generations(conn: AsyncConnection, board: str, new: Sequence[Shard]) -> None:
    """A kept shard's generation never goes down, and goes up when its range, node or state changes."""
    cur = await conn.execute(
        "SELECT id, lower, upper, node, state, pending_cut, generation FROM shards WHERE board = %s", (board,)
    )
    old = {row[0]: row[1:] for row in await cur.fetchall()}
    for i, shard in enumerate(new):
        if shard.id not in old:
            continue
        *layout, generation = old[shard.id]
        if shard.generation < generation:
            problem = f"{shard.generation} is below the stored {generation}"
        elif shard.generation == generation and layout != [
            shard.lower,
            shard.upper,
            shard.node,
            shard.state,
            shard.pending_cut,
        ]:
            problem = f"shard {shard.id} changed but its generation stayed {generation}"
        else:
            continue
        raise InvalidArgument(f"shards[{i}].generation", problem)


async def _check_nodes(conn: AsyncConnection, node_ids: Iterable[str]) -> None:
    wanted = set(node_ids)
    cur = await conn.execute("SELECT id FROM nodes WHERE id = ANY(%s)", (sorted(wanted),))
    missing = wanted - {node for (node,) in await cur.fetchall()}
    if missing:
        raise NotFound(f"node {min(missing)!r} not found")


async def _insert_shards(conn: AsyncConnection, board: str, shards: Sequence[Shard]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO shards (board, id, lower, upper, node, state, generation, pending_cut)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(board, s.id, s.lower, s.upper, s.node, str(s.state), s.generation, s.pending_cut) for s in shards],
        )


async def _notify(conn: AsyncConnection, board: str, epoch: int) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (EPOCH_CHANNEL, f"{board}:{epoch}"))


def _next_shard_number(shards: Iterable[Shard]) -> int:
    numbers = [int(m[1]) for s in shards if (m := _SHARD_NUMBER.fullmatch(s.id))]
    return max(numbers, default=0) + 1


async def _listen(conn: AsyncConnection) -> list[tuple[str, int]]:
    """Starts listening, then reads every board's epoch: a change racing the read is heard either way."""
    await conn.execute("LISTEN rankshard_epoch")  # EPOCH_CHANNEL
    cur = await conn.execute('SELECT name, epoch FROM boards ORDER BY name COLLATE "C"')
    return [(name, epoch) for name, epoch in await cur.fetchall()]


def _parse_payload(payload: str) -> tuple[str, int] | None:
    board, _, epoch = payload.rpartition(":")
    if not board or not epoch.isdigit():
        log.warning("ignoring malformed %s payload %r", EPOCH_CHANNEL, payload)
        return None
    return board, int(epoch)
