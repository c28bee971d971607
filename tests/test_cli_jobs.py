"""`rankshard shards split|merge|move` and `rankshard jobs` through the real CLI, against a real router taking writes:
ranks exact after each job; every refused command one line that changes nothing; Ctrl-C leaves a job to resume."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from _cli_jobs import (
    board_equals_model,
    checked_clean,
    cli,
    other_node,
    quiet_client,
    seed,
    seeded_writer,
    shard_at,
    snapshot,
)
from _router import Client
from test_carve import BOARD, Writer

from rankshard.cli._job_run import JobInterrupted, job_owner, run_job
from rankshard.shard_map import DEFAULTS, ControlPlane, Job, JobState, JobStep
from rankshard.shard_node import Carver, connect_cluster, plan_move

STEPS = ["PREPARE", "FLOOR", "COPY", "CATCHUP", "FREEZE", "COMMITTED", "CLEANUP"]


@pytest.fixture
def client(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[Client]:
    yield from quiet_client(control_plane_dsn, node_addresses)


@pytest.fixture
def writing(client: Client) -> Iterator[Writer]:
    """Board `carve` (cut at 100) seeded, a writer incrementing it until the test ends."""
    yield from seeded_writer(client, 11)


def test_split_move_and_merge_under_writes_log_each_step_and_keep_ranks_exact(
    writing: Writer, client: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    result = cli(dsn, "shards", "split", "-l", BOARD, "--shard", "s2", "--at", "200")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    described = "job 1 (split s2 at 200 -> s3 of 'carve')"
    assert [re.sub(r"\W.*", "", line.removeprefix(f"{described}: ")) for line in lines[:-1]] == STEPS, lines
    assert re.fullmatch(rf"{re.escape(described)}: COPY 0/\d+", lines[2]), lines
    assert re.fullmatch(
        rf"{re.escape(described)}: done, split into s2 \[100, 200\) on n\d and s3 \[200, inf\) on n\d; "
        r"[\d,]+ members carved, writes frozen [\d,]+ ms",
        lines[-1],
    ), lines

    node = shard_at(dsn, 250).node
    other = other_node(node)
    result = cli(dsn, "shards", "move", "-l", BOARD, "--shard", "s3", "--to", other)
    assert result.exit_code == 0, result.output
    assert re.search(rf"done, moved: now s4 \[200, inf\) on {other};", result.output), result.output
    writing.wait_for(30)

    result = cli(dsn, "shards", "merge", "-l", BOARD, "--shard", "s1", "--with", "s2")
    assert result.exit_code == 0, result.output
    assert re.search(r"done, merged into s[12] \[-inf, 200\) on n\d;", result.output), result.output

    listed = json.loads(cli(dsn, "jobs", "list", "--json").output)
    assert [(j["id"], j["kind"], j["state"], j["step"]) for j in listed] == [
        (3, "merge", "DONE", "DONE"),
        (2, "move", "DONE", "DONE"),
        (1, "split", "DONE", "DONE"),
    ]
    assert listed[1]["plan"]["source_node"] == node and listed[1]["target_node"] == other
    table = cli(dsn, "jobs", "list", "-l", BOARD).output.splitlines()
    assert table[0].split() == ["ID", "BOARD", "KIND", "SHARDS", "STEP", "STATE", "PROGRESS", "OWNER", "UPDATED"]
    assert table[3].split()[:6] == ["1", BOARD, "split", "s2", "->", "s3"]
    shown = cli(dsn, "jobs", "show", "2").output
    assert f"  target_node: {other}" in shown and "  plan: lower 200, upper -, source_node " in shown, shown

    writing.stop()
    checked_clean(dsn)
    board_equals_model(client, writing.expected)


def test_refused_commands_say_why_in_one_line_and_change_nothing(
    client: Client, control_plane_dsn: str, node_addresses: list[str]
) -> None:
    dsn = control_plane_dsn
    seed(client, [100, 200])  # s1 (-inf, 100), s2 [100, 200), s3 [200, inf)
    held = asyncio.run(_plan_move_held_by_another(dsn, "s3"))  # job 1, claimed by "another" for a minute
    s1_node = shard_at(dsn, 0).node
    _set_state(dsn, other_node(s1_node), "DRAINING")
    refused = [
        (["shards", "split", "-l", BOARD, "--shard", "s9"], "no shard 's9' (its shards: s1, s2, s3)"),
        (["shards", "split", "-l", "nosuch", "--shard", "s1"], "nosuch"),
        (["shards", "split", "-l", BOARD, "--shard", "s2", "--at", "50"], "50 is not inside shard s2 [100, 200)"),
        (["shards", "split", "-l", BOARD, "--shard", "s2", "--at", "100"], "must be above its lower end"),
        (["shards", "merge", "-l", BOARD, "--shard", "s1", "--with", "s2x"], "no shard 's2x'"),
        (["shards", "merge", "-l", BOARD, "--shard", "s1", "--with", "s1"], "is the shard itself"),
        (["shards", "move", "-l", BOARD, "--shard", "s1", "--to", "n9"], "node 'n9' not found"),
        (["shards", "move", "-l", BOARD, "--shard", "s1", "--to", s1_node], f"shard s1 is on {s1_node} already"),
        (["shards", "move", "-l", BOARD, "--shard", "s1", "--to", other_node(s1_node)], "is being drained"),
        (["shards", "split", "-l", BOARD, "--shard", "s3", "--at", "250"], f"already in {held.describe()}"),
        (["shards", "merge", "-l", BOARD, "--shard", "s2", "--with", "s3"], f"already in {held.describe()}"),
        (["jobs", "resume", "1"], "is being run by another (its claim holds until"),
        (["jobs", "abort", "1"], "is being run by another"),
        (["jobs", "show", "9"], "job 9 not found"),
        (["jobs", "resume", "9"], "job 9 not found"),
    ]
    before = snapshot(dsn)
    for args, message in refused:
        result = cli(dsn, *args)
        assert result.exit_code != 0, (args, result.output)
        assert result.stdout == "", (args, result.output)
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, (args, result.stderr)
        assert snapshot(dsn) == before, args
    _set_state(dsn, other_node(s1_node), "ACTIVE")
    # Only neighbours merge: with s2 free again, s1 and s3 still do not.
    asyncio.run(_finish(dsn, held))
    before = snapshot(dsn)
    result = cli(dsn, "shards", "merge", "-l", BOARD, "--shard", "s1", "--with", "s4")
    assert result.exit_code == 2 and "is not adjacent to s1" in result.stderr, result.output
    assert len(result.stderr.splitlines()) == 1 and snapshot(dsn) == before


def _set_state(dsn: str, node: str, state: str) -> None:
    """A node's state set in the control plane, as `nodes drain` sets it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, node))


async def _plan_move_held_by_another(dsn: str, shard: str, lease_s: float = 60) -> Job:
    async with await ControlPlane.open(dsn) as cp:
        node = next(s for s in (await cp.shard_map(BOARD)).shards if s.id == shard).node
        return await plan_move(cp, BOARD, shard, other_node(node), "another", lease_s)


async def _finish(dsn: str, job: Job) -> None:
    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            done = await Carver(cp, cluster, "another").run(job)
            assert done.state is JobState.DONE
        finally:
            await cluster.aclose()


class _Stop(Exception):
    """Raised from a step hook: the job stops there, as if its process had died."""


def test_a_committed_job_is_refused_abort_and_resumed_once_its_claim_has_passed(
    client: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    expected = seed(client, [100])
    job = asyncio.run(_stopped_at(dsn, JobStep.COMMITTED))
    before = snapshot(dsn)
    result = cli(dsn, "jobs", "abort", str(job.id))
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"rankshard: {job.describe()} is past its commit (step COMMITTED): it can only be finished, with "
        f"`rankshard jobs resume {job.id}`; nothing was changed\n"
    )
    assert snapshot(dsn) == before
    result = cli(dsn, "jobs", "resume", str(job.id))
    assert result.exit_code == 1 and "is being run by test" in result.stderr, result.output
    assert snapshot(dsn) == before
    with psycopg.connect(dsn, autocommit=True) as conn:  # the owner's claim passes (as if it died a while ago)
        conn.execute("UPDATE migration_jobs SET lease_until = now() - interval '1 second'")
    result = cli(dsn, "jobs", "resume", str(job.id))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith(f"{job.describe()}: done, moved: now s3")
    result = cli(dsn, "jobs", "resume", str(job.id))
    assert (result.exit_code, result.output) == (0, f"{job.describe()} has ended already: DONE; nothing to resume\n")
    checked_clean(dsn)
    board_equals_model(client, expected)


async def _stopped_at(dsn: str, step: JobStep) -> Job:
    """A move of s1 stopped at `step` by owner "test", whose claim holds 30 s."""

    def hook(job: Job) -> None:
        if job.step is step:
            raise _Stop

    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            node = next(s for s in (await cp.shard_map(BOARD)).shards if s.id == "s1").node
            job = await plan_move(cp, BOARD, "s1", other_node(node), "test", 30)
            with pytest.raises(_Stop):
                await Carver(cp, cluster, "test", on_step=hook).run(job)
            return await cp.jobs.get(job.id)
        finally:
            await cluster.aclose()


def test_ctrl_c_stops_a_job_at_its_step_and_gives_up_its_claim(
    writing: Writer, client: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    interrupted = asyncio.run(_interrupted_at(dsn, JobStep.CATCHUP))
    assert interrupted.exit_code == 130
    assert interrupted.message == (
        f"{interrupted.job.describe()}: interrupted at CATCHUP; resume it with `rankshard jobs resume 1` "
        "(or run the same command again)"
    )
    row = json.loads(cli(dsn, "jobs", "show", "1", "--json").output)
    assert (row["state"], row["step"]) == ("RUNNING", "CATCHUP")
    assert datetime.fromisoformat(row["lease_until"]) <= datetime.now(UTC)  # resumable at once, by anyone
    result = cli(dsn, "jobs", "resume", "1")
    assert result.exit_code == 0, result.output
    assert "done, moved" in result.output.splitlines()[-1]
    writing.stop()
    checked_clean(dsn)
    board_equals_model(client, writing.expected)


async def _interrupted_at(dsn: str, step: JobStep) -> JobInterrupted:
    """A move of s1 run by `run_job`, with a real SIGINT sent to this process once its row says `step`."""

    def interrupt(job: Job) -> None:
        if job.step is step:
            os.kill(os.getpid(), signal.SIGINT)

    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            node = next(s for s in (await cp.shard_map(BOARD)).shards if s.id == "s1").node
            job = await plan_move(cp, BOARD, "s1", other_node(node), job_owner(), 30)
            with pytest.raises(JobInterrupted) as caught:
                await run_job(cp, cluster, job, DEFAULTS, echo=lambda _: None, terminal=False, on_step=interrupt)
            return caught.value
        finally:
            await cluster.aclose()


def test_ctrl_c_of_the_cli_is_one_line_and_exit_130(client: Client, control_plane_dsn: str) -> None:
    """`jobs resume` held up by a lock on the job's row (so it is surely waiting), then sent SIGINT."""
    dsn = control_plane_dsn
    seed(client, [100])
    job = asyncio.run(_plan_move_held_by_another(dsn, "s1", lease_s=0))
    argv = [sys.executable, "-m", "rankshard.cli", "--control-plane", dsn, "jobs", "resume", str(job.id)]
    with psycopg.connect(dsn) as lock:
        lock.execute("SELECT id FROM migration_jobs WHERE id = %s FOR UPDATE", (job.id,))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_lock_wait(dsn)  # its claim
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, (out, err)
    assert (out, err) == (
        "",
        f"rankshard: {job.describe()}: interrupted at PLAN; resume it with `rankshard jobs resume {job.id}` "
        "(or run the same command again)\n",
    )
    result = cli(dsn, "jobs", "resume", str(job.id))
    assert result.exit_code == 0 and "done, moved" in result.output, result.output


def _wait_lock_wait(dsn: str, timeout: float = 30.0) -> None:
    """Until a session waits for a lock on a job's row."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%migration_jobs%%'"
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(query).fetchone()[0]:  # type: ignore[index]  # count(*) is one row
            assert time.monotonic() < deadline, "no session waited for the lock on the job's row"
            time.sleep(0.02)


def test_on_a_terminal_a_job_shows_a_progress_bar(client: Client, control_plane_dsn: str) -> None:
    seed(client, [100])
    argv = [sys.executable, "-m", "rankshard.cli", "--control-plane", control_plane_dsn]
    output = _on_a_terminal([*argv, "shards", "split", "-l", BOARD, "--shard", "s2", "--at", "200"])
    assert re.search(r"job 1 split s2 .*#+.*\b100/100\b.*100%", output), output
    assert "COPY" in output and "/s" in output
    assert ": PREPARE" not in output  # no log lines on a terminal
    assert output.rstrip().splitlines()[-1].startswith("job 1 (split s2 at 200 -> s3 of 'carve'): done, split")


def _on_a_terminal(argv: list[str], timeout: float = 60.0) -> str:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    return output.decode(errors="replace").replace("\r", "\n")
