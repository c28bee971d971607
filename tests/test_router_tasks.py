"""The router's background tasks have an owner: a task that crashes is logged with its traceback and started
again after a backoff, while the router keeps serving (router/_tasks.py), seen through a real router process."""

from __future__ import annotations

import asyncio

from _jepsen import OK, UNKNOWN, poll, read_finals, update
from _processes import RouterProcess
from _router import Client, bootstrap

from rankshard.router._tasks import BackgroundTasks

BOARD = "tasks"
NEVER = 10**9  # a sweep age no pending move reaches in a test


def _moving(node_addresses: list[str], member: str) -> bool:
    final = read_finals(node_addresses, BOARD, [member], allow_moving=True)[member]
    assert final is not None, f"{member} has no index entry"
    return final.moving


def test_a_sweeper_that_crashes_is_logged_started_again_and_then_sweeps(
    control_plane_dsn: str, node_addresses: list[str]
) -> None:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    # A router that dies halfway through a crossing leaves a move that only a sweeper (or a write) finishes.
    doomed = RouterProcess(control_plane_dsn, crash_at="destination_written", sweep_age_ms=NEVER).start()
    client = Client(doomed.port)
    try:
        client.create(BOARD, boundaries=[0, 50])
        assert update(client.lb, BOARD, "victim", 10, "seed", 10.0).outcome == OK
        assert update(client.lb, BOARD, "victim", 50, "crossing", 10.0).outcome == UNKNOWN
        assert doomed.wait_exit(15) == -9, "the router did not SIGKILL itself at the crash point"
    finally:
        client.close()
        doomed.stop()
    assert _moving(node_addresses, "victim")

    env = {
        "RANKSHARD_FAIL_TASK": "sweeper:2",  # its first two starts raise
        "RANKSHARD_TASK_RESTART_DELAY": "0.05",
        "RANKSHARD_SWEEP_INTERVAL": "0.05",
        "RANKSHARD_SWEEP_AGE_MS": "200",
    }
    healer = RouterProcess(control_plane_dsn, env=env).start()
    try:
        poll(
            lambda: not _moving(node_addresses, "victim"),
            30,
            "the restarted sweeper to finish the abandoned move",
            report=lambda: "".join(healer.output),
        )
        assert healer.proc is not None and healer.proc.poll() is None, "the router stopped"
    finally:
        healer.stop()
    log = "".join(healer.output)
    crashes = [line for line in log.splitlines() if "background task sweeper crashed" in line]
    # Each crash is logged whole, and the second waits twice as long as the first before the next start.
    assert [line.split("crashed; ")[1] for line in crashes] == [
        "starting it again in 0.05 s",
        "starting it again in 0.1 s",
    ], log
    assert log.count("Traceback (most recent call last)") == 2, log
    assert log.count("InjectedFault: injected fault in background task sweeper") == 2, log


def test_a_task_that_loses_a_cancellation_still_ends_when_its_owner_exits() -> None:
    """On Python 3.11, `asyncio.wait_for` (psycopg's pool waits with it) drops a cancellation that arrives as its
    wait completes; the task then goes on as if never cancelled. Its owner's exit must still end it, and not
    start it again."""
    starts: list[str] = []
    started = asyncio.Event()

    async def stubborn() -> None:
        starts.append("started")
        started.set()
        lost = False
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True  # the first cancellation lost on the way

    async def owner() -> None:
        async with BackgroundTasks(restart_delay=0.01, max_delay=0.1) as tasks:
            tasks.keep_running("stubborn", stubborn)
            await started.wait()

    asyncio.run(asyncio.wait_for(owner(), 30))
    assert starts == ["started"]
