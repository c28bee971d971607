"""Every Lua script rankshard runs on a node: loaded once from ``scripts/*.lua``, called by SHA.

Each script is the shared prelude (``scripts/_prelude.lua``) followed by its own file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


# The modes and kinds scripts take as arguments; each value is the string its script compares with.


class IndexMode(StrEnum):
    """index_apply's mode (ARGV[1])."""

    APPLY = "apply"
    """A batch, all or nothing: a refused update aborts it before anything is written."""
    CHECK = "check"
    """Read-only: the round that finds refusals and pending moves before a batch over several nodes applies."""
    EACH = "each"
    """Coalesced unary calls: a refused update is that update's answer alone; the others are applied."""


class ShardWriteMode(StrEnum):
    """shard_apply's mode (ARGV[2]), shard_write's (ARGV[1])."""

    WRITE = "write"
    """Writes an update only if its version is newer than the member's registered one."""
    REWRITE = "rewrite"
    """Repair only: also at the registered version, so a member whose shard data was lost comes back."""


class CountQuery(StrEnum):
    """The kind of a shard_count (or shard_tally) query."""

    BETTER = "b"
    """Members strictly better than a stored score."""
    POSITION = "r"
    """A member's 0-based position in its shard (-1 when it is not there)."""


class ClearMode(StrEnum):
    """shard_clear's mode (ARGV[1])."""

    RANGE = "range"
    """A job clearing its target of the carved range: the members in it removed, the kept size counted again."""
    DROP = "drop"
    """A job's new target rolled back: its zset and descriptor deleted."""
    INSTALL = "install"
    """Repair: a lost descriptor set again (only when the node holds none)."""
    FORGET = "forget"
    """Repair: the shard's kept size dropped (a full count sets it again)."""


def _load(name: str) -> Script:
    folder = resources.files(__package__) / "scripts"
    prelude = (folder / "_prelude.lua").read_text(encoding="utf-8")
    source = prelude + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


INDEX_APPLY = _load("index_apply")
INDEX_MOVE = _load("index_move")
INDEX_FORGET = _load("index_forget")
INDEX_REMOVE = _load("index_remove")
INDEX_STALE_MOVES = _load("index_stale_moves")
INDEX_IMPORT = _load("index_import")
INDEX_REBUILD = _load("index_rebuild")
SHARD_APPLY = _load("shard_apply")
SHARD_WRITE = _load("shard_write")
SHARD_REMOVE = _load("shard_remove")
SHARD_DROP = _load("shard_drop")
SHARD_CROSS = _load("shard_cross")
SHARD_COUNT = _load("shard_count")
SHARD_TALLY = _load("shard_tally")
SHARD_CLEAR = _load("shard_clear")
SHARD_PAGE = _load("shard_page")
COLLECT_TOMBSTONES = _load("collect_tombstones")
CARVE_DESCRIBE = _load("carve_describe")
CARVE_TAKE = _load("carve_take")
CARVE_READ = _load("carve_read")
CARVE_SETTLE = _load("carve_settle")
CARVE_FLOOR = _load("carve_floor")
CARVE_CLEANUP = _load("carve_cleanup")

ALL = (
    INDEX_APPLY,
    INDEX_MOVE,
    INDEX_FORGET,
    INDEX_REMOVE,
    INDEX_STALE_MOVES,
    INDEX_IMPORT,
    INDEX_REBUILD,
    SHARD_APPLY,
    SHARD_WRITE,
    SHARD_REMOVE,
    SHARD_DROP,
    SHARD_CROSS,
    SHARD_COUNT,
    SHARD_TALLY,
    SHARD_CLEAR,
    SHARD_PAGE,
    COLLECT_TOMBSTONES,
    CARVE_DESCRIBE,
    CARVE_TAKE,
    CARVE_READ,
    CARVE_SETTLE,
    CARVE_FLOOR,
    CARVE_CLEANUP,
)
