"""Schema migrations of the control plane: the plain SQL files in ``shard_map/migrations``.

Each file is named ``NNNN_name.sql`` and applied once, in version order, in its own transaction, and recorded
in ``schema_migrations``. Every transaction that applies migrations first takes a transaction-level advisory
lock, so routers and CLIs starting together apply each file exactly once and none of them fails.
`missing_versions` only reads: it is how a command that must not write finds out whether the schema is there.

This module speaks psycopg and lets its exceptions through; the store translates them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection

from ._errors import ControlPlaneError

MIGRATION_LOCK = 0x72616E6B73686172
"""Key of the advisory lock that serialises migrations (the bytes of "rankshar")."""

_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")

_CREATE_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     integer     PRIMARY KEY,
        name        text        NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""


class SchemaMissing(ControlPlaneError):
    """The control plane database has no rankshard schema (`none_applied`) or lacks some of its migrations
    (`missing`: the versions not applied); nothing was written to it. `where` is ``host:port/dbname``."""

    def __init__(self, where: str, missing: Sequence[int], *, none_applied: bool) -> None:
        self.where = where
        self.missing = tuple(missing)
        self.none_applied = none_applied
        problem = (
            "has no rankshard schema"
            if none_applied
            else f"lacks schema migration(s) {', '.join(map(str, self.missing))}"
        )
        super().__init__(f"control plane (PostgreSQL at {where}) {problem}; apply the migrations first")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order.

    Raises `RuntimeError` on a misnamed file or a repeated version: a packaging bug, not a runtime condition.
    """
    found: dict[int, Migration] = {}
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise RuntimeError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise RuntimeError(f"two migration files have version {version}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def schema_version() -> int:
    """The version of the newest shipped migration: the schema this code reads and writes."""
    return load_migrations()[-1].version


async def apply_migrations(conn: AsyncConnection) -> list[int]:
    """Applies every migration not yet recorded; returns the versions this call applied.

    `conn` must be in autocommit mode (each migration gets its own transaction here).
    """
    pending = [m for m in load_migrations() if m.version not in await applied_versions(conn)]
    applied = []
    for migration in pending:
        if await _apply_one(conn, migration):
            applied.append(migration.version)
    return applied


async def missing_versions(conn: AsyncConnection) -> tuple[list[int], bool]:
    """The shipped migration versions not recorded in `conn`'s database, and whether none is recorded.

    Reads only: no table is created and no lock taken, so it is safe on any database a DSN names.
    """
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    recorded: set[int] = set()
    if row is not None and row[0]:
        cur = await conn.execute("SELECT version FROM schema_migrations")
        recorded = {version for (version,) in await cur.fetchall()}
    return [m.version for m in load_migrations() if m.version not in recorded], not recorded


async def applied_versions(conn: AsyncConnection) -> set[int]:
    async with conn.transaction():
        await _lock(conn)
        await conn.execute(_CREATE_TABLE)
        cur = await conn.execute("SELECT version FROM schema_migrations")
        return {version for (version,) in await cur.fetchall()}


async def _apply_one(conn: AsyncConnection, migration: Migration) -> bool:
    async with conn.transaction():
        await _lock(conn)
        cur = await conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,))
        if await cur.fetchone() is not None:
            return False  # another process applied it while we waited for the lock
        # No parameters: psycopg sends the file as one simple query, several statements allowed.
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )
        return True


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
