"""A `rankshard shards move|split|merge` SIGKILLed at each step of its job (RANKSHARD_JOB_CRASH_AT) while a writer
runs: running the same command again, `jobs resume ID` or `repair` finishes the job or rolls it back, and at the end
no acknowledged update is lost or doubled (GetTop equals the writer's model) and `check` finds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from _cli_jobs import (
    board_equals_model,
    checked_clean,
    cli,
    other_node,
    quiet_client,
    seeded_writer,
    shard_at,
    snapshot,
)
from _router import Client
from test_carve import BOARD, Writer

from rankshard.shard_map import Job, JobState, JobStep

LEASE_S = "1"
"""The killed CLI's claim on its job: what recovering waits for, so short here."""


@pytest.fixture
def client(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[Client]:
    yield from quiet_client(control_plane_dsn, node_addresses)


@pytest.fixture
def writing(client: Client) -> Iterator[Writer]:
    yield from seeded_writer(client, 5)


def test_a_move_killed_at_each_step_is_finished_or_rolled_back(
    writing: Writer, client: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    crashes = [
        ("PREPARE:2", "rerun"),  # the second row at PREPARE: the map says MIGRATING
        ("FLOOR", "resume"),
        ("COPY", "repair"),
        ("CATCHUP", "rerun"),
        ("FREEZE:2", "repair"),  # inside the freeze: the source frozen, or COMMITTING
        ("COMMITTED", "rerun"),
        ("CLEANUP", "resume"),
    ]
    for crash, recovery in crashes:
        shard = shard_at(dsn, 0)
        args = ["shards", "move", "-l", BOARD, "--shard", shard.id, "--to", other_node(shard.node)]
        _killed_then_recovered(dsn, args, crash, recovery)
        writing.wait_for(20)
    writing.stop()
    checked_clean(dsn)
    board_equals_model(client, writing.expected)


def test_splits_and_merges_killed_mid_way_are_finished_or_rolled_back(
    writing: Writer, client: Client, control_plane_dsn: str
) -> None:
    dsn = control_plane_dsn
    crashes = [
        ("split", "COPY", "rerun"),
        ("merge", "COPY", "resume"),
        ("split", "FREEZE", "repair"),
        ("merge", "FREEZE", "rerun"),
        ("split", "COMMITTED", "resume"),
        ("merge", "COMMITTED", "repair"),
    ]
    for kind, crash, recovery in crashes:
        _killed_then_recovered(dsn, _split_or_merge(dsn, kind), crash, recovery)
        writing.wait_for(20)
    writing.stop()
    checked_clean(dsn)
    board_equals_model(client, writing.expected)


def _split_or_merge(dsn: str, kind: str) -> list[str]:
    """A split of the shard holding 200 (at 200, or above its lower end), or a merge of it with the one below."""
    shard = shard_at(dsn, 200)
    if kind == "split":
        cut = 200 if shard.lower is None or shard.lower < 200 else shard.lower + 40
        return ["shards", "split", "-l", BOARD, "--shard", shard.id, "--at", str(cut)]
    assert shard.lower is not None
    below = shard_at(dsn, shard.lower - 1)
    return ["shards", "merge", "-l", BOARD, "--shard", shard.id, "--with", below.id]


def _killed_then_recovered(dsn: str, args: list[str], crash: str, recovery: str) -> None:
    """`rankshard ARGS` killed at `crash`, then its job ended by `recovery`: the job DONE, or ABORTED when `repair`
    found it before its commit."""
    killed = _run_killed(dsn, args, crash)
    step = JobStep(crash.partition(":")[0])
    assert killed.step is step, killed
    _wait_claim_passed(dsn, killed.id)
    if recovery == "rerun":
        result = cli(dsn, *args)
    elif recovery == "resume":
        result = cli(dsn, "jobs", "resume", str(killed.id))
    else:
        result = cli(dsn, "repair", "-l", BOARD)
        # repair's exit status is its check of the board, which writes in flight can trouble: judged at the end
    ended = next(j for j in snapshot(dsn)[2] if j.id == killed.id)
    wanted = JobState.ABORTED if recovery == "repair" and not step.committed else JobState.DONE
    assert ended.state is wanted, (crash, recovery, ended, result.output)
    if recovery == "repair":
        assert f"{killed.describe()}: {'finished' if wanted is JobState.DONE else 'rolled back'}" in result.output
    else:
        assert result.exit_code == 0, (crash, recovery, result.output)
        assert f"{killed.describe()}: done" in result.output.splitlines()[-1]


def _run_killed(dsn: str, args: list[str], crash: str) -> Job:
    """The job `rankshard ARGS` was running when it SIGKILLed itself at `crash`."""
    env = os.environ | {"RANKSHARD_JOB_CRASH_AT": crash, "RANKSHARD_JOB_LEASE": LEASE_S}
    argv = [sys.executable, "-m", "rankshard.cli", "--control-plane", dsn, *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (crash, proc.returncode, proc.stdout, proc.stderr)
    running = [j for j in snapshot(dsn)[2] if j.state is JobState.RUNNING]
    assert len(running) == 1, running
    return running[0]


def _wait_claim_passed(dsn: str, job_id: int, timeout: float = 30.0) -> None:
    """Until the killed CLI's claim on the job has passed, by the control plane's clock (the one claims go by)."""
    query = "SELECT lease_until < now() FROM migration_jobs WHERE id = %s"
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(query, (job_id,)).fetchone()[0]:  # type: ignore[index]  # the job's row exists
            assert time.monotonic() < deadline, f"the claim on job {job_id} did not pass"
            time.sleep(0.05)
