"""Request coalescing: calls that arrive for one key while its batches are under way run as one batch.

A router under load has many calls in flight; run one by one, each pays its own node round trips, Lua
calls and Python bookkeeping. Grouped, `UpdateScore` calls become one index-script call per index node
and one shard write per node, and `GetRank` calls one pipelined read per node, which is most of what
a router core can gain (docs/architecture.md: batching and pipelining per node).

Batching is natural, not timed (group commit): a key runs at most `max_in_flight` batches at once (one by
default); calls arriving meanwhile wait for a batch to finish and then go together as the next one. An
idle router runs each call at once (no added latency); a loaded one makes bigger batches the more it is
loaded. One batch at a time is what a CPU-bound router wants: with two, the second starts while calls are
still being read off the wire and carries a few (measured on UpdateScore: 7 calls per batch with two in
flight, 21 with one, and 1.3x the calls per router core at a lower p99).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("rankshard.router")

K = TypeVar("K", bound=Hashable)
Item = TypeVar("Item")
R = TypeVar("R")

BatchRunner = Callable[[K, list[Item]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[K, Item, R]):
    """Groups `submit`ted items by key; `run(key, items)` answers each item in order, with a result or
    an exception for that item alone. An exception raised by `run` itself fails the whole batch.

    Each batch runs in a task this object owns: a caller that gives up (its deadline passed) does not
    cancel the others' work. `aclose` waits for the batches under way. What a batch raises goes to its
    callers; anything a task raises besides (a bug of this class) is logged with its traceback.
    `on_batch`, when given, is told each batch's size as it starts.
    """

    def __init__(
        self,
        run: BatchRunner[K, Item, R],
        max_batch: int = 1000,
        max_in_flight: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._on_batch = on_batch
        self._max = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: dict[K, list[tuple[Item, asyncio.Future[R]]]] = {}
        self._running: dict[K, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: Item) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(key, [])
        waiting.append((item, future))
        if self._running.get(key, 0) < self._max_in_flight or len(waiting) >= self._max:
            self._start(key)
        # A caller cancelled by its deadline cancels only its own future: the batch runs in its own
        # task and skips answers nobody waits for.
        return await future

    def _start(self, key: K) -> None:
        waiting = self._waiting.pop(key, [])
        batch, rest = waiting[: self._max], waiting[self._max :]
        if rest:
            self._waiting[key] = rest
        if not batch:
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        self._running[key] = self._running.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._execute(key, batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("a coalesced batch's task failed", exc_info=error)

    async def _execute(self, key: K, batch: list[tuple[Item, asyncio.Future[R]]]) -> None:
        try:
            await self._answer(key, batch)
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            if key in self._waiting:
                self._start(key)

    async def _answer(self, key: K, batch: list[tuple[Item, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run(key, [item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        """Waits for every batch under way (new submissions are the caller's to stop first)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
