"""The owner of the router's background tasks: a task that crashes is logged with its traceback and started again.

`BackgroundTasks` runs each task under a supervision loop, all of them in one `asyncio.TaskGroup` that lives as
long as the router. A task that raises (or returns: none is meant to) is logged at ERROR with its traceback, and
started again after a backoff: `restart_delay` seconds, doubled for each crash in a row, at most `max_delay`; a
task that ran longer than `max_delay` before it crashed starts again from `restart_delay`. Whether a task should
rather stop the router is decided per task, in its docstring (so far every task is restarted).

Nothing runs unowned: should a supervision loop itself fail, the TaskGroup cancels the router's main task and the
router process exits non-zero with that traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger("rankshard.router")

Task = Callable[[], Awaitable[None]]
STOP_RETRY = 0.5
"""Seconds between cancellations of a background task that has not ended yet."""


class InjectedFault(RuntimeError):
    """Raised into a background task by the test hook `Settings.fail_task` (``RANKSHARD_FAIL_TASK``)."""


class BackgroundTasks:
    """Background tasks owned by the router; an async context manager whose exit cancels them and waits.

    `fail_task` is the test hook ``TASK`` or ``TASK:N``: the task named TASK raises `InjectedFault` as it
    starts, its first N starts (default 1).
    """

    def __init__(self, restart_delay: float, max_delay: float, fail_task: str | None = None) -> None:
        self._first = restart_delay
        self._max = max_delay
        self._group = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        name, _, times = (fail_task or "").partition(":")
        self._faults = {name: int(times or 1)} if name else {}

    async def __aenter__(self) -> BackgroundTasks:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        # Cancelled again until they end: on Python 3.11 `asyncio.wait_for` (psycopg's pool waits with it) drops a
        # cancellation that arrives as its wait completes, and the task then goes on as if never cancelled.
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=STOP_RETRY)
        # The caller's own exception goes on as it is (a TaskGroup would wrap it in an ExceptionGroup); what the
        # group raises is a supervision loop's failure, which is to end the process.
        await self._group.__aexit__(None, None, None)

    def keep_running(self, name: str, task: Task) -> None:
        """Runs `task()` until the owner exits, starting it again whenever it crashes or returns."""
        self._tasks.append(self._group.create_task(self._supervise(name, task), name=name))

    async def _supervise(self, name: str, task: Task) -> None:
        loop = asyncio.get_running_loop()
        delay: float | None = None
        while not self._stopping:
            started = loop.time()
            try:
                self._inject(name)
                await task()
            except Exception:  # a bug of the task: logged whole, and the task goes on after a pause
                if self._stopping:
                    return  # a cancellation turned into an error on its way out
                delay = self._next_delay(delay, loop.time() - started)
                log.exception("background task %s crashed; starting it again in %g s", name, delay)
            else:
                if self._stopping:
                    return
                delay = self._next_delay(delay, loop.time() - started)
                log.error("background task %s returned; starting it again in %g s", name, delay)
            await asyncio.sleep(delay)

    def _next_delay(self, previous: float | None, ran: float) -> float:
        if previous is None or ran > self._max:
            return self._first
        return min(2 * previous, self._max)

    def _inject(self, name: str) -> None:
        if self._faults.get(name, 0) > 0:
            self._faults[name] -= 1
            raise InjectedFault(f"injected fault in background task {name} (RANKSHARD_FAIL_TASK)")
