"""`rankshard cluster up`: real processes from embedded defaults, a clean stop, data that survives, a supervisor
that restarts what dies, and refusals that leave a running cluster (and its `cluster.json`) alone."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.cli._binaries import node_preload, valkey_binary
from rankshard.cli._local import _alive, _descendants, free_port
from rankshard.shard_map import Settings
from rankshard.v1 import admin_pb2 as apb
from rankshard.v1 import admin_pb2_grpc as apb_grpc
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

START_TIMEOUT = 60.0


class Up:
    """One `rankshard cluster up` subprocess. Threads collect its stdout and stderr lines as they come."""

    def __init__(self, data_dir: Path, port: int, *args: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankshard.cli",
                "--data-dir",
                str(data_dir),
                "cluster",
                "up",
                "--port",
                str(port),
                "--nodes",
                "2",
                "--shards",
                "3",
                "--boundaries",
                "100,200",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RANKSHARD_PG_FAST": "1"},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._ended = 0
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended += 1
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = START_TIMEOUT) -> str:
        """The first stdout line matching regex `pattern`; fails if none comes in time or the command ends."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if found := next((line for line in self.stdout if re.search(pattern, line)), None):
                    return found
                remaining = deadline - time.monotonic()
                if self._ended == len(self._readers) or remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in time; output:\n{self.output()}")
                self._changed.wait(remaining)

    def wait_exit(self, timeout: float) -> int:
        """Its exit code, once it has exited and its output is read."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def output(self) -> str:
        return "\n".join(self.stdout + ["-- stderr --"] + self.stderr)

    def settings(self) -> dict[str, object]:
        return json.loads((self.data_dir / "cluster.json").read_text())  # type: ignore[no-any-return]

    def child(self, matches: Callable[[list[str]], bool]) -> list[int]:
        """Pids of its direct children whose command line `matches`."""
        found = []
        for pid in _children(self.proc.pid):
            with suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                if matches(argv):
                    found.append(pid)
        return found

    def stop(self) -> set[int]:
        """SIGTERM; asserts a clean exit and returns whatever it started that still runs."""
        children = set(_descendants(self.proc.pid))
        assert children, "cluster up started no processes"
        self.proc.send_signal(signal.SIGTERM)
        assert self.wait_exit(60) == 0, self.output()
        return {pid for pid in children if _alive(pid)}

    def close(self) -> None:
        """Ends it however it stands (the fixture's clean-up); its children die with it (parent-death signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()


def _children(pid: int) -> list[int]:
    with suppress(OSError):
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    return []


def _valkey_on(port: int) -> Callable[[list[str]], bool]:
    # A running Valkey rewrites its command line to "valkey-server HOST:PORT".
    return lambda argv: argv[0].split("/")[-1] == f"valkey-server 127.0.0.1:{port}"


def _postgres_on(port: int) -> Callable[[list[str]], bool]:
    return lambda argv: argv[0].endswith("postgres") and "-p" in argv and argv[argv.index("-p") + 1] == str(port)


def _is_router(argv: list[str]) -> bool:
    return argv[1:3] == ["-m", "rankshard.router"]


def _listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (Linux: state 0A of /proc/net/tcp is LISTEN; gRPC listens
    on an IPv6 socket bound to ::ffff:127.0.0.1, listed in tcp6)."""
    local = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    rows = [row.split() for table in ("tcp", "tcp6") for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1] in local and row[3] == "0A")


def _wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def _top(port: int) -> list[tuple[str, int]] | None:
    """Board `global`'s top 100, or None while the cluster cannot answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = pb_grpc.LeaderboardStub(channel).GetTop(
                pb.GetTopRequest(leaderboard="global", limit=100), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            raise
    return [(e.user_id, e.score) for e in reply.entries]


def _update(port: int, scores: dict[str, int]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        lb = pb_grpc.LeaderboardStub(channel)
        for user, score in scores.items():
            lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="global", user_id=user, score=score), timeout=10)


@pytest.fixture
def start_up() -> Iterator[Callable[..., Up]]:
    """Starts `cluster up` commands; ends every one still running after the test, pass or fail."""
    started: list[Up] = []

    def start(data_dir: Path, port: int, *args: str) -> Up:
        started.append(Up(data_dir, port, *args))
        return started[-1]

    yield start
    for up in started:
        up.close()


def test_up_serves_stops_cleanly_and_restarts_with_the_same_data(tmp_path: Path, start_up: Callable[..., Up]) -> None:
    port = free_port()
    up = start_up(tmp_path, port)
    assert up.wait_line("router listening on") == f"rankshard: router listening on 127.0.0.1:{port}"
    # It says which allocator the nodes were given (cli._binaries.node_preload), when it gave them one.
    library = node_preload(Settings.from_env(), valkey_binary())
    said = [line for line in up.stdout if line.startswith("rankshard: nodes run on ")]
    assert said == ([f"rankshard: nodes run on {library} (their server's own malloc is libc's)"] if library else [])
    _update(port, {"ann": 50, "ben": 150, "cat": 250})
    _update(port, {"ann": 100})
    before = _top(port)
    assert before == [("cat", 250), ("ann", 150), ("ben", 150)]
    assert up.stop() == set(), "processes left behind after SIGTERM"

    up = start_up(tmp_path, port)
    up.wait_line("router listening on")
    assert _top(port) == before
    assert up.stop() == set()


def test_a_killed_node_router_and_postgres_come_back_on_their_ports_with_their_data(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    port = free_port()
    up = start_up(tmp_path, port, "--routers", "2")
    up.wait_line("router listening on")
    settings = up.settings()
    metrics_ports: list[int] = settings["metrics_ports"]  # type: ignore[assignment]
    assert len(set(metrics_ports)) == 2
    urls = ", ".join(f"http://127.0.0.1:{p}/metrics" for p in metrics_ports)
    assert up.wait_line("^rankshard: metrics ") == f"rankshard: metrics {urls}"
    node_port, pg_port = settings["node_ports"][1], settings["postgres_port"]  # type: ignore[index]
    scores = {f"user{i}": 15 * i for i in range(20)}  # every shard, both nodes
    _update(port, scores)
    for each in settings["node_ports"]:  # type: ignore[attr-defined]
        with redis.Redis(port=each) as node:
            assert node.execute_command("WAITAOF", 1, 0, 10_000)[0] == 1  # on disk before the crash
    victims = [*up.child(_valkey_on(node_port)), up.child(_is_router)[0], *up.child(_postgres_on(pg_port))]
    assert len(victims) == 3
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    up.wait_line(rf"^rankshard: node n2 \(127\.0\.0\.1:{node_port}\) exited with code -9; restarted")
    up.wait_line(rf"^rankshard: router \d \(127\.0\.0\.1:{port}\) exited with code -9; restarted")
    up.wait_line(rf"^rankshard: postgres \(127\.0\.0\.1:{pg_port}\) exited with code -9; restarted")
    assert not set(victims) & set(_children(up.proc.pid))
    assert len(up.child(_valkey_on(node_port))) == 1 and len(up.child(_postgres_on(pg_port))) == 1
    assert len(up.child(_is_router)) == 2 and _listeners(port) == 2  # the new router rejoined the port
    expected = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    _wait_until(lambda: _top(port) == expected, "the scores written before the crash are served again")
    with psycopg.connect(f"postgresql://rankshard@127.0.0.1:{pg_port}/rankshard") as conn:
        assert conn.execute("SELECT count(*) FROM nodes").fetchone() == (2,)
    for metrics_port in metrics_ports:  # the restarted router's too
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            assert b"# TYPE rankshard_requests_total counter" in reply.read()
    assert up.stop() == set()


def test_a_process_that_keeps_dying_stops_the_cluster_naming_it_with_its_log(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    port = free_port()
    up = start_up(tmp_path, port)
    up.wait_line("router listening on")
    node_port = up.settings()["node_ports"][0]  # type: ignore[index]
    started = set(_descendants(up.proc.pid))
    # A node that cannot read its own AOF any more: every restart exits at once.
    (tmp_path / "nodes" / "node1" / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
    os.kill(up.child(_valkey_on(node_port))[0], signal.SIGKILL)

    assert up.wait_exit(timeout=60) != 0
    name = f"node n1 (127.0.0.1:{node_port})"
    assert len(up.stderr) == 1, up.output()
    assert name in up.stderr[0] and "keeps dying" in up.stderr[0] and "exit code 1" in up.stderr[0]
    assert any(f"rankshard: {name} exited with code -9; restart failed" in line for line in up.stdout), up.output()
    assert any("Invalid AOF manifest file format" in line for line in up.stdout), "the node's log tail is shown"
    assert {pid for pid in started if _alive(pid)} == set()


def test_up_refuses_a_router_port_another_cluster_serves(tmp_path: Path, start_up: Callable[..., Up]) -> None:
    port = free_port()
    first = start_up(tmp_path / "a", port, "--routers", "2")
    first.wait_line("router listening on")

    second = start_up(tmp_path / "b", port)
    assert second.wait_exit(timeout=30) != 0, second.output()
    assert len(second.stderr) == 1 and f"127.0.0.1:{port}" in second.stderr[0] and "in use" in second.stderr[0]
    assert not (tmp_path / "b" / "cluster.json").exists()

    dsn = f"postgresql://rankshard@127.0.0.1:{first.settings()['postgres_port']}/rankshard"
    lone = subprocess.run(
        [sys.executable, "-m", "rankshard.router", "--control-plane", dsn, "--port", str(port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert lone.returncode == 1
    assert lone.stderr.splitlines() == [f"rankshard router: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert _listeners(port) == 2 and _top(port) == []
    assert first.stop() == set()


def test_a_second_up_on_a_running_data_dir_says_so_and_changes_nothing(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    port = free_port()
    first = start_up(tmp_path, port)
    first.wait_line("router listening on")
    settings = (tmp_path / "cluster.json").read_bytes()

    second = start_up(tmp_path, free_port())
    assert second.wait_exit(timeout=30) != 0
    running = f"a cluster is already running in {tmp_path} (pid {first.proc.pid}, router 127.0.0.1:{port})"
    assert len(second.stderr) == 1 and second.stderr[0].endswith(running), second.output()
    assert (tmp_path / "cluster.json").read_bytes() == settings
    assert _top(port) == []

    # A supervisor killed outright leaves its lock behind, which must not block the next start.
    started = set(_descendants(first.proc.pid))
    first.proc.kill()
    first.wait_exit(10)
    _wait_until(lambda: not any(map(_alive, started)), "the killed cluster's processes die with it")
    third = start_up(tmp_path, port)
    third.wait_line("router listening on")
    assert third.stop() == set()


def test_up_with_auth_and_tls_serves_tokens_over_tls_and_the_cli_finds_both(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    port = free_port()
    up = start_up(tmp_path, port, "--auth", "--tls")
    up.wait_line("router listening on")
    assert f"rankshard: routers require a token of {tmp_path / 'tokens.json'}" in up.stdout
    assert (up.settings()["auth"], up.settings()["tls"]) == (True, True)
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    assert set(tokens) == {"admin", "game"} and tokens["admin"] != tokens["game"]
    kept = (tmp_path / "tokens.json").read_bytes(), (tmp_path / "tls" / "ca.pem").read_bytes()

    assert _top(port) is None, "a plaintext client is not served"
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(kept[1])) as channel:
        lb, admin = pb_grpc.LeaderboardStub(channel), apb_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as anonymous:
            lb.GetTop(pb.GetTopRequest(leaderboard="global"), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        game = (("authorization", f"Bearer {tokens['game']}"),)
        lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="global", user_id="ann", score=42), metadata=game, timeout=10)
        with pytest.raises(grpc.RpcError) as denied:
            admin.ListLeaderboards(apb.ListLeaderboardsRequest(), metadata=game, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    top = ["--data-dir", str(tmp_path), "leaderboards", "top", "global", "--json"]
    shown = CliRunner().invoke(main, top, env={"RANKSHARD_TOKEN": ""})
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == [{"rank": 1, "user_id": "ann", "score": 42}]
    wrong = CliRunner().invoke(main, top, env={"RANKSHARD_TOKEN": "not-a-token"})
    assert wrong.exit_code == 1
    assert wrong.stderr == f"rankshard: 127.0.0.1:{port} answered UNAUTHENTICATED: unknown token\n"
    assert up.stop() == set()

    up = start_up(tmp_path, port, "--auth", "--tls")
    up.wait_line("router listening on")
    assert ((tmp_path / "tokens.json").read_bytes(), (tmp_path / "tls" / "ca.pem").read_bytes()) == kept
    again = CliRunner().invoke(main, top, env={"RANKSHARD_TOKEN": tokens["game"]})
    assert again.exit_code == 0 and json.loads(again.stdout)[0]["user_id"] == "ann", again.output
    assert up.stop() == set()


def test_nodes_add_local_starts_a_node_the_running_cluster_supervises_and_rebalance_uses_it(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    alone = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "none"), "nodes", "add", "--local"])
    assert alone.exit_code == 1 and "Traceback" not in alone.output
    assert alone.stderr.splitlines() == [
        f"rankshard: no cluster is running in {tmp_path / 'none'}: start one with "
        f"`rankshard --data-dir {tmp_path / 'none'} cluster up`, then add nodes to it"
    ]

    port = free_port()
    up = start_up(tmp_path, port)
    up.wait_line("router listening on")
    added = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "nodes", "add", "--local"])
    assert added.exit_code == 0, added.output
    node_port = up.settings()["node_ports"][2]  # type: ignore[index]
    assert added.stdout == f"started node n3 at 127.0.0.1:{node_port}; the cluster in {tmp_path} supervises it\n"
    up.wait_line(rf"^rankshard: node 127\.0\.0\.1:{node_port} joined the cluster")
    with redis.Redis(port=node_port) as node:
        assert node.ping()
    listed = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "nodes", "list", "--json"])
    assert [(n["id"], n["state"], n["shards"]) for n in json.loads(listed.stdout)][2] == ("n3", "ACTIVE", 0)

    (victim,) = up.child(_valkey_on(node_port))
    os.kill(victim, signal.SIGKILL)
    up.wait_line(rf"^rankshard: node 127\.0\.0\.1:{node_port} exited with code -9; restarted")
    assert len(up.child(_valkey_on(node_port))) == 1

    scores = {f"user{i}": 5 * i for i in range(60)}  # s1 and s2 on n1 hold 40, s3 on n2 20
    _update(port, scores)
    out = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "rebalance", "-l", "global"])
    assert out.exit_code == 0, out.output
    listed = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "nodes", "list", "--json"])
    assert [n["members"] for n in json.loads(listed.stdout)] == [20, 20, 20]
    assert _top(port) == sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    assert up.stop() == set()
