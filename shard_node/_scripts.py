"""Every Lua script rankshard runs on a node: loaded once from ``scripts/*.lua``, called by SHA.

Each script is the shared prelude (``scripts/_prelude.lua``) followed by its own file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


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
SHARD_REMOVE = _load("shard_remove")
SHARD_COUNT = _load("shard_count")
SHARD_PAGE = _load("shard_page")
COLLECT_TOMBSTONES = _load("collect_tombstones")

ALL = (
    INDEX_APPLY,
    INDEX_MOVE,
    INDEX_FORGET,
    INDEX_REMOVE,
    INDEX_STALE_MOVES,
    INDEX_IMPORT,
    INDEX_REBUILD,
    SHARD_APPLY,
    SHARD_REMOVE,
    SHARD_COUNT,
    SHARD_PAGE,
    COLLECT_TOMBSTONES,
)
