"""Real Valkey and PostgreSQL server processes for the local cluster (`rankshard cluster up`) and the tests.

Contract of every server started here:
- it listens on 127.0.0.1 only, on the port it was given, and keeps its data in the directory it was given, so a
  second start on the same directory sees what the first one stored;
- it dies with the process that started it (Linux `PR_SET_PDEATHSIG`, see `die_with_parent`), so a SIGKILLed test
  runner or `cluster up` leaves no orphan server. Linux sends that signal when the *thread* that spawned the server
  exits, so call `start` from a long-lived thread (the main thread), never from a pool worker;
- a `start` that fails kills whatever it spawned and raises RuntimeError carrying the tail of the server's log.

Binaries are found by `_binaries`. Options come from a `Settings` (`node_*`, `pg_fast`, `valkey_bin`,
`postgres_bin`): the one given, else `Settings.from_env()`, since the tests start servers here directly.
Process bookkeeping reads /proc: this module targets Linux.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Self, cast

import psycopg
import redis

from rankshard.shard_map import Settings

from ._binaries import node_preload, postgres_bin_dir, valkey_binary

_POLL_SECONDS = 0.02
_PR_SET_PDEATHSIG = 1
_PG_USER = "rankshard"
# Looked up here, not in the forked child, which must not dlopen.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_spawner_pid = os.getpid()


def _remember_spawner() -> None:
    global _spawner_pid
    _spawner_pid = os.getpid()


# Runs in the parent just before Popen forks (it does when given a preexec_fn), so the child knows its parent.
os.register_at_fork(before=_remember_spawner)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """A `preexec_fn`: the child gets `sig` when the thread that spawned it exits (Linux; a no-op elsewhere).

    Popen runs it after switching `user`/`group`, which matters: a credential change clears the death signal."""
    if _prctl is None:
        return
    _prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig))
    if os.getppid() != _spawner_pid:  # the parent died before the signal was armed
        os._exit(1)


_PORT_RANGE = (20000, 32767)
"""Below Linux's ephemeral range (32768-60999): a port picked here is not also handed to some
outgoing connection between our check and the server's bind, as a port from bind(0) can be."""
_handed_out: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, never the same one twice per process."""
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError):
            text = stat_file.read_text()  # the command name may hold ')': the fields after its last one are fixed
            parents[int(stat_file.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    found: list[int] = []
    frontier = {pid}
    while frontier := {child for child, parent in parents.items() if parent in frontier}:
        found += frontier
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs. A zombie does not: it waits for a reaper that may never come in a container."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def log_tail(path: Path, size: int = 3000) -> str:
    """The last `size` bytes of the log at `path` as text, or "(no log)" when it cannot be read."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - size))
            return log.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def _run_as(account: pwd.struct_passwd | None, sig: signal.Signals) -> dict[str, Any]:
    """Popen keyword arguments: run as `account` (None: as ourselves) and receive `sig` when we die."""
    dropped = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    return {"preexec_fn": functools.partial(die_with_parent, sig), **dropped}


class _ServerProcess:
    """One spawned server; subclasses say how to start it and which signal asks it to shut down cleanly."""

    _stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.log_path = log_path
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the last spawned server (it may have exited since); None before the first start."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the last spawned server ended (negative: the signal that killed it); None while it runs or
        before the first start. After a failed `start` it is that attempt's."""
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the server down cleanly and wait for it; SIGKILL it if it overruns `timeout`. No-op if not running."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(self._stop_signal)
        self._proc.send_signal(signal.SIGCONT)  # a paused server would never act on the stop signal
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self, timeout: float = 15.0) -> None:
        """Crash the server: SIGKILL it and every process it forked, and wait until all are gone."""
        if self._proc is None or self._proc.poll() is not None:
            return
        os.kill(self._proc.pid, signal.SIGSTOP)  # a stopped server cannot fork while we list its children
        tree = [self._proc.pid, *_descendants(self._proc.pid)]
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(map(_alive, tree)) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(
        self, argv: list[str], account: pwd.struct_passwd | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Starts `argv` (as `account`; with `env` added to ours)."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env={**os.environ, **env} if env else None,
                **_run_as(account, self._stop_signal),
            )

    def _wait_ready(self, is_ready: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll `is_ready` until it holds; if the server exits first or `deadline` passes, kill it and raise."""
        assert self._proc is not None
        while True:
            if (code := self._proc.poll()) is not None:
                self._fail(f"{what} on port {self._port} exited with code {code} while starting")
            if is_ready():
                return
            if time.monotonic() >= deadline:
                self._fail(f"{what} on port {self._port} was not ready in time")
            time.sleep(_POLL_SECONDS)

    def _fail(self, message: str) -> None:
        self.kill()
        raise RuntimeError(f"{message}; tail of {self.log_path}:\n{log_tail(self.log_path)}")


def node_server_options(settings: Settings) -> list[str]:
    """The options every rankshard node's server runs with, from `settings`' `node_*`: those of a local node
    (which adds only where it listens and logs) and those compose.sharded.yml gives its nodes."""
    return [
        "--appendonly",
        "yes" if settings.node_appendonly else "no",
        "--appendfsync",
        settings.node_appendfsync,
        "--save",
        "",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        # rankshard spreads index entries, version registers and request-id records over small hashes;
        # up to 1024 entries each (the default) stay listpacks (~18 B/entry, against ~54 B in a hashtable),
        # which keeps boards of up to ~16M members per index and ~8M per node compact (shard_node._keys).
        "--hash-max-listpack-entries",
        str(settings.node_hash_max_listpack_entries),
    ]


class LocalValkey(_ServerProcess):
    """A Valkey (or Redis) node on 127.0.0.1:`port` persisting to `data_dir`, by default with an AOF fsynced every
    second (`settings`' `node_*`). Its log is `data_dir/valkey.log`. Raises RuntimeError when there is no binary."""

    def __init__(
        self, data_dir: Path, port: int, *, settings: Settings | None = None, binary: str | None = None
    ) -> None:
        super().__init__(data_dir, port, Path(data_dir).absolute() / "valkey.log")
        self.settings = settings or Settings.from_env()
        self.binary = binary or valkey_binary(self.settings)
        self.preload = node_preload(self.settings, self.binary)
        """The malloc library the server runs on (`node_preload`), None for its own."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the server and wait until it answers PING. No-op if running; raises RuntimeError on failure."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self._port),
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.log_path),
                *node_server_options(self.settings),
            ],
            env={"LD_PRELOAD": self.preload} if self.preload else None,
        )
        self._wait_ready(self._answers_ping, deadline, "valkey")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered until `resume`."""
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause` (SIGCONT)."""
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGCONT)

    def _answers_ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self._port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            with client:
                client.ping()  # raises BusyLoadingError while the AOF is replayed
                server_pid = cast(dict[str, Any], client.info("server"))["process_id"]
        except redis.RedisError:
            return False
        if server_pid != self.pid:
            self._fail(f"port {self._port} is served by another process (pid {server_pid})")
        return True


def _server_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None (ourselves) unless we are root, which PostgreSQL refuses to be."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and there is no 'postgres' or 'nobody' account to run PostgreSQL as")


def _hand_over(data_dir: Path, account: pwd.struct_passwd) -> None:
    """Give `data_dir` to `account` and let it reach it, changing no more permissions than that needs."""
    if data_dir.stat().st_uid != account.pw_uid:
        for path in (data_dir, *data_dir.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    for parent in data_dir.resolve().parents:
        info = parent.stat()
        if not (
            info.st_mode & stat.S_IXOTH
            or info.st_uid == account.pw_uid
            and info.st_mode & stat.S_IXUSR
            or info.st_gid == account.pw_gid
            and info.st_mode & stat.S_IXGRP
        ):
            # e.g. pytest's 0700 basetemp: the server must pass through it, and need not list it.
            parent.chmod(info.st_mode | stat.S_IXOTH)


class LocalPostgres(_ServerProcess):
    """A PostgreSQL server on 127.0.0.1:`port` whose cluster lives in `data_dir` (initdb'd on first start), with
    superuser `rankshard` (trust auth) and database `rankshard`. Its log is `<data_dir>.log`, beside `data_dir`.

    `fast=True` (or `settings.pg_fast`) trades crash safety for speed, for tests: initdb --no-sync, fsync=off.
    When we are root, the server runs as the `postgres` account (else `nobody`), which then owns `data_dir`.
    Raises RuntimeError when there is no PostgreSQL build."""

    # Fast shutdown: a smart one (SIGTERM) would wait for every client to disconnect on its own.
    _stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        fast: bool = False,
        settings: Settings | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        data_dir = Path(data_dir).absolute()
        super().__init__(data_dir, port, data_dir.with_name(data_dir.name + ".log"))
        settings = settings or Settings.from_env()
        self.fast = fast or settings.pg_fast
        self.bin_dir = bin_dir or postgres_bin_dir(settings)

    @property
    def dsn(self) -> str:
        return self.dsn_for(_PG_USER)

    def dsn_for(self, dbname: str) -> str:
        """DSN of database `dbname` on this server."""
        return f"postgresql://{_PG_USER}@127.0.0.1:{self._port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the cluster if needed, spawn the server, wait until it accepts connections, create database
        `rankshard` if absent. No-op if running; raises RuntimeError on failure, leaving nothing running."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # PostgreSQL refuses a data directory that others can read
        if account := _server_account():
            _hand_over(self.data_dir, account)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(account, deadline)
        settings = ["listen_addresses=127.0.0.1", "unix_socket_directories=", "max_connections=200"]
        settings += ["fsync=off"] if self.fast else []
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self._port)]
        self._spawn(argv + [arg for setting in settings for arg in ("-c", setting)], account)
        self._wait_ready(self._is_ready, deadline, "postgres")
        try:
            with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_PG_USER,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{_PG_USER}"')
        except psycopg.Error as exc:
            self._fail(f"could not create database {_PG_USER}: {exc}")

    def _initdb(self, account: pwd.struct_passwd | None, deadline: float) -> None:
        # Locale C: a locale the host lacks would make initdb fail, and byte order is all we need.
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            _PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            *(["--no-sync"] if self.fast else []),
        ]
        with self.log_path.open("ab") as log:
            try:
                failed = (
                    subprocess.run(
                        argv,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.data_dir,
                        timeout=max(deadline - time.monotonic(), 1.0),
                        **_run_as(account, signal.SIGTERM),
                    ).returncode
                    != 0
                )
            except subprocess.TimeoutExpired:
                failed = True
        if failed:
            raise RuntimeError(
                f"initdb failed for {self.data_dir}; tail of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _is_ready(self) -> bool:
        # The server notes in its pid file when it accepts connections. Reading that, rather than connecting,
        # cannot mistake another server holding our port (or a stale file of a crashed run) for ours.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[0] == str(self.pid) and lines[7].strip() == "ready"
