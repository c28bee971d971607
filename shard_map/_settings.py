"""Every tunable of a rankshard process in one frozen value, and the values the contract fixes.

A `Settings` is built in three layers, each overriding the one before:

1. the defaults below (``Settings()``, also `DEFAULTS`);
2. the environment, ``RANKSHARD_<FIELD>`` in upper case (`Settings.from_env`); an empty variable counts as unset;
3. the command line: the router's flag for each setting it uses (``--sweep-interval``), the ``rankshard``
   options standing for one (``--data-dir``), and those of ``rankshard cluster up`` (``--node-appendonly``),
   applied with `dataclasses.replace` over the values `SettingSpec.parse` made of the flags.

The entry points (``python -m rankshard.router``, ``rankshard``) build one and pass its values down as
arguments; no other module reads the environment. Every value is checked when a `Settings` is made: a bad
one raises `SettingsError` naming the variable or flag it came from. docs/operations.md lists every setting
(tests/test_settings.py keeps that table equal to the fields here).

Values the contract fixes are not settings: `FIXED` documents them, with why none may be tuned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RANKSHARD_"

ROUTER = "router"
"""`python -m rankshard.router`: a flag of the router."""
RANKSHARD = "rankshard"
"""Every `rankshard` command: an option of `rankshard` itself."""
LOCAL_CLUSTER = "cluster up"
"""Local clusters (`rankshard cluster up`, `demo`, `bench`, the tests' servers): an option of `cluster up`."""


class SettingsError(ValueError):
    """A setting has a value it cannot take; the message names the variable or flag, and what is wrong."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """How a setting's text is read (`convert`, raising `ValueError`) and which values it may take (`check`,
    raising `ValueError` saying why not)."""

    convert: Callable[[str], Any]
    check: Callable[[Any], None]
    metavar: str
    """What its flag's value is called in `--help`."""
    words: tuple[str, ...] = ()
    """For a choice or a boolean: the words it takes."""

    def parse(self, text: str) -> Any:
        value = self.convert(text)
        self.check(value)
        return value


def _number(kind: type[int] | type[float], minimum: float, metavar: str, above: bool = False) -> _Kind:
    def convert(text: str) -> Any:
        try:
            return kind(text.strip())
        except ValueError:
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}, not {text!r}") from None

    def check(value: Any) -> None:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, not {value!r}")
        if value < minimum or (above and value == minimum):
            raise ValueError(f"must be {'above' if above else 'at least'} {minimum:g}, not {value!r}")

    return _Kind(convert, check, metavar)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE + _FALSE:
        return word in _TRUE
    raise ValueError(f"must be one of {', '.join(_TRUE + _FALSE)}, not {text!r}")


def _choice(*words: str) -> _Kind:
    def check(value: Any) -> None:
        if value not in words:
            raise ValueError(f"must be one of {', '.join(words)}, not {value!r}")

    return _Kind(str, check, "|".join(words), words)


def _anything(value: Any) -> None:
    """Texts and paths are checked where they are used: whether a DSN answers, a binary runs."""


def _hook(value: Any) -> None:
    name, colon, times = str(value).partition(":")
    if not name or (colon and not (times.isdigit() and int(times) >= 1)):
        raise ValueError(f"must be NAME or NAME:N with N a positive integer, not {value!r}")


def _share(value: Any) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be above 0 and at most 1, not {value!r}")


_SECONDS = _number(float, 0.0, "SECONDS", above=True)
_SHARE = _Kind(float, _share, "SHARE")
_SECONDS_OR_NONE = _number(float, 0.0, "SECONDS")
_MILLISECONDS = _number(int, 0, "MS")
_COUNT = _number(int, 1, "N")
_ENTRIES = _number(int, 0, "N")
_BOOLEAN = _Kind(_boolean, _anything, "BOOL", _TRUE + _FALSE)
_DSN = _Kind(str, _anything, "DSN")
_BINARY = _Kind(str, _anything, "PATH")
_PATH = _Kind(Path, _anything, "PATH")
_HOOK = _Kind(str, _hook, "NAME[:N]")
_HOST = _Kind(str, _anything, "HOST")
_MALLOC = _Kind(str, _anything, "auto|libc|PATH")


def _port_number(value: Any) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number (0 to 65535), not {value!r}")


_PORT = _Kind(_number(int, 0, "PORT").convert, _port_number, "PORT")


def _setting(default: Any, meaning: str, kind: _Kind, *used_by: str, flag: bool = True) -> Any:
    """A field of `Settings`: its default, what it means (for the docs and `--help`), how its text is read,
    which processes use it, and whether it has a flag (test hooks have only their variable)."""
    return field(default=default, metadata={"meaning": meaning, "kind": kind, "used_by": used_by, "flag": flag})


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings of one rankshard process; see the module docstring for where each value comes from.

    Raises `SettingsError` when a value is out of its range.
    """

    control_plane: str | None = _setting(None, "PostgreSQL DSN of the control plane", _DSN, ROUTER, RANKSHARD)
    call_deadline: float = _setting(
        10.0, "seconds a call may take when its client set no deadline: nothing waits forever", _SECONDS, ROUTER
    )
    node_timeout: float = _setting(
        2.0, "seconds a node may take to answer one command before it counts as unavailable", _SECONDS, ROUTER
    )
    control_plane_timeout: float = _setting(
        10.0,
        "seconds a control-plane query may wait for a connection and for its answer; also the connect timeout",
        _SECONDS,
        ROUTER,
        RANKSHARD,
    )
    control_plane_pool_size: int = _setting(
        4, "connections to the control plane a router keeps at most", _COUNT, ROUTER
    )
    sweep_interval: float = _setting(2.0, "seconds between the sweeper's rounds", _SECONDS, ROUTER)
    sweep_age_ms: int = _setting(
        5000,
        "age (ms) at which a pending write or crossing counts as abandoned, for the sweeper to finish",
        _MILLISECONDS,
        ROUTER,
    )
    size_cache_ms: int = _setting(
        0,
        "ms for which a count may use the shard sizes this router last saw on a node instead of asking it (a read "
        "then misses other routers' writes to that node's shards of at most that long ago, never this router's "
        "own); 0: every count asks every node of the board, and every read reflects every call returned before it",
        _MILLISECONDS,
        ROUTER,
    )
    drain_grace: float = _setting(
        2.0, "seconds a stopping router (SIGINT, SIGTERM) gives its calls in flight", _SECONDS_OR_NONE, ROUTER
    )
    task_restart_delay: float = _setting(
        0.5,
        "seconds before a crashed background task of the router (sweeper, epoch follower) starts again; "
        "doubled for each crash in a row",
        _SECONDS,
        ROUTER,
    )
    task_restart_max_delay: float = _setting(
        30.0, "the longest wait before a crashed background task starts again", _SECONDS, ROUTER
    )
    tokens: Path | None = _setting(
        None,
        "JSON file of the bearer tokens the router accepts, by role, with optional rate limits "
        "(docs/operations.md, Tokens and TLS); unset: every call is served without a token",
        _PATH,
        ROUTER,
    )
    tls_cert: Path | None = _setting(
        None, "PEM certificate chain the router serves TLS with (with tls_key); unset: plaintext", _PATH, ROUTER
    )
    tls_key: Path | None = _setting(None, "PEM private key of tls_cert", _PATH, ROUTER)
    tls_client_ca: Path | None = _setting(
        None,
        "PEM CA certificates; set, the router requires a client certificate they signed (mutual TLS)",
        _PATH,
        ROUTER,
    )
    token: str | None = _setting(
        None,
        "bearer token of the CLI's calls to a router, instead of the local cluster's admin token (tokens.json); "
        "prefer the variable, as a flag shows in the process list",
        _Kind(str, _anything, "TOKEN"),
        RANKSHARD,
    )
    metrics_port: int = _setting(
        0,
        "port of the router's Prometheus metrics endpoint (`/metrics`); 0 serves none. A local cluster picks "
        "free ones for its routers (`cluster.json`: `metrics_ports`)",
        _PORT,
        ROUTER,
    )
    metrics_host: str = _setting(
        "127.0.0.1", "address the metrics endpoint listens on (with `metrics_port`)", _HOST, ROUTER
    )
    metrics_poll_interval: float = _setting(
        5.0,
        "seconds between the router's reads of the running rebalancing jobs, for their metrics (with `metrics_port`)",
        _SECONDS,
        ROUTER,
    )
    data_dir: Path = _setting(
        Path(".rankshard"), "where a local cluster keeps its processes' data and connection settings", _PATH, RANKSHARD
    )
    valkey_bin: str | None = _setting(
        None,
        "node server binary for local clusters, instead of valkey-server or redis-server on PATH, else the bundled one",
        _BINARY,
        LOCAL_CLUSTER,
    )
    postgres_bin: Path | None = _setting(
        None,
        "directory holding postgres, initdb and pg_ctl for local clusters, instead of PATH or the bundled build",
        _PATH,
        LOCAL_CLUSTER,
    )
    pg_fast: bool = _setting(
        False,
        "local PostgreSQL without fsync, initialised without syncing: faster, and a machine crash can lose its data",
        _BOOLEAN,
        LOCAL_CLUSTER,
    )
    node_appendonly: bool = _setting(
        True, "local nodes keep an append-only file, so a restarted node has its data", _BOOLEAN, LOCAL_CLUSTER
    )
    node_appendfsync: str = _setting(
        "everysec", "when local nodes fsync their append-only file", _choice("always", "everysec", "no"), LOCAL_CLUSTER
    )
    node_malloc: str = _setting(
        "auto",
        "the allocator local nodes run on: auto (jemalloc when the server was built with libc malloc and libjemalloc "
        "is found: what Valkey's own builds use), libc (the server's own), or the path of a malloc library to preload",
        _MALLOC,
        LOCAL_CLUSTER,
    )
    node_hash_max_listpack_entries: int = _setting(
        1024,
        "entries up to which a local node keeps a hash compact (rankshard keeps many small hashes)",
        _ENTRIES,
        LOCAL_CLUSTER,
    )
    restart_delay: float = _setting(
        0.5,
        "seconds before a local process that died is restarted; doubled for each death in a row",
        _SECONDS,
        LOCAL_CLUSTER,
    )
    restart_max_delay: float = _setting(8.0, "the longest wait before a restart", _SECONDS, LOCAL_CLUSTER)
    restart_stable_after: float = _setting(
        10.0, "seconds up after which a process's next restart waits the first delay again", _SECONDS, LOCAL_CLUSTER
    )
    restart_max_deaths: int = _setting(
        5, "deaths within the window after which the cluster gives up and stops", _COUNT, LOCAL_CLUSTER
    )
    restart_window: float = _setting(60.0, "seconds over which deaths are counted", _SECONDS, LOCAL_CLUSTER)
    job_lease: float = _setting(
        30.0,
        "seconds a rebalancing job stays claimed by the CLI running it (renewed as it goes): another process may "
        "resume a job once its claim has passed, so this is how long a job killed mid-way waits for `jobs resume`",
        _SECONDS,
        RANKSHARD,
    )
    job_pace: float = _setting(
        0.5,
        "share of the time a rebalancing job's copy may keep its nodes busy: after each batch it rests "
        "(1 - pace) / pace times as long as the batch took, so the board's own traffic keeps the rest; 1 copies "
        "flat out (fastest, with the most latency added to calls on those nodes). The catch-up after it runs flat "
        "out: it must outrun the writes to the shard",
        _SHARE,
        RANKSHARD,
    )
    crash_at: str | None = _setting(
        None,
        "testing only: STEP or STEP:N makes the router SIGKILL itself the N-th time a write reaches that step of a "
        "crossing (shard_node.MOVE_STEPS). Never set it in production",
        _HOOK,
        ROUTER,
        flag=False,
    )
    fail_task: str | None = _setting(
        None,
        "testing only: TASK or TASK:N makes that background task of the router (sweeper, epoch-follower) raise "
        "as it starts, its first N starts. Never set it in production",
        _HOOK,
        ROUTER,
        flag=False,
    )

    job_crash_at: str | None = _setting(
        None,
        "testing only: STEP or STEP:N makes the CLI SIGKILL itself right after a rebalancing job's row was "
        "recorded at that step (shard_map.JobStep), the N-th time. Never set it in production",
        _HOOK,
        RANKSHARD,
        flag=False,
    )

    def __post_init__(self) -> None:
        for spec in setting_specs():
            value = getattr(self, spec.name)
            if value is not None:
                try:
                    spec.kind.check(value)
                except ValueError as exc:
                    raise SettingsError(f"{spec.name}: {exc}") from None
        for first, cap in (("task_restart_delay", "task_restart_max_delay"), ("restart_delay", "restart_max_delay")):
            if getattr(self, first) > getattr(self, cap):
                raise SettingsError(f"{first} ({getattr(self, first):g}) is above {cap} ({getattr(self, cap):g})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The defaults overridden by every ``RANKSHARD_<FIELD>`` set in `environ` (default: the process's).

        Raises `SettingsError` naming the first variable whose value cannot be read or is out of range.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in setting_specs():
            text = environ.get(spec.env)
            if text:
                try:
                    values[spec.name] = spec.kind.parse(text)
                except ValueError as exc:
                    raise SettingsError(f"{spec.env}: {exc}") from None
        return dataclasses.replace(DEFAULTS, **values)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """What is known of one setting: for flags, `--help` and the docs."""

    name: str
    default: Any
    meaning: str
    kind: _Kind
    used_by: tuple[str, ...]
    has_flag: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        return self.kind.metavar

    @property
    def is_bool(self) -> bool:
        return self.kind is _BOOLEAN

    def parse(self, text: str) -> Any:
        """Its value written as `text` (in its variable or flag); raises `ValueError` saying what is wrong,
        for the caller to name where the text came from."""
        return self.kind.parse(text)

    @property
    def words(self) -> tuple[str, ...]:
        """The words it takes, for a choice or a boolean; empty for the rest."""
        return self.kind.words


def setting_specs(used_by: str | None = None) -> tuple[SettingSpec, ...]:
    """Every setting in field order, or those `used_by` one kind of process (`ROUTER`, `RANKSHARD`...)."""
    specs = _specs()
    return specs if used_by is None else tuple(s for s in specs if used_by in s.used_by)


@functools.cache
def _specs() -> tuple[SettingSpec, ...]:
    return tuple(
        SettingSpec(
            f.name, f.default, f.metadata["meaning"], f.metadata["kind"], f.metadata["used_by"], f.metadata["flag"]
        )
        for f in dataclasses.fields(Settings)
    )


DEFAULTS = Settings()


@dataclass(frozen=True, slots=True)
class Fixed:
    """A value the contract fixes: documented with the settings, and tunable by no one."""

    name: str
    value: int
    why: str


FIXED = (
    Fixed(
        "DEDUP_WINDOW_MS",
        3_600_000,
        "a request id is recognised for at most one hour (docs/api.md, idempotency); index_apply.lua hard-codes it",
    ),
    Fixed(
        "DEDUP_DEPTH",
        8,
        "a request id is recognised while among its member's last 8 updates (docs/api.md); "
        "index_apply.lua hard-codes it",
    ),
    Fixed(
        "DEDUP_GEN_MS",
        300_000,
        "request-id records are kept in generations of 5 minutes, dropped whole; index_apply.lua hard-codes it",
    ),
    Fixed(
        "DEDUP_BUCKETS",
        8192,
        "request-id records of a board are spread over this many hashes: part of the key layout, so another value "
        "would not find the records already written",
    ),
    Fixed(
        "WRITE_LIFETIME_MS",
        600_000,
        "no write is still on its way to a shard this long after its index commit; every router must assume the "
        "same bound",
    ),
    Fixed(
        "TOMBSTONE_TTL_MS",
        4_200_000,
        "DEDUP_WINDOW_MS + WRITE_LIFETIME_MS: a younger tombstone may still have to refuse a late write, so every "
        "router collects them at this one age",
    ),
)
