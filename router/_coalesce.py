"""Request coalescing: the calls that arrive for one key during one event-loop iteration run as one batch.

A router under load has many calls in flight; run one by one, each pays its own node round trips, Lua
calls and Python bookkeeping. Grouped, `UpdateScore` calls become one index-script call per index node
and one shard write per node, and `GetRank` calls one pipelined read per node, which is most of what
a router core can gain (DESIGN.md: batching and pipelining per node). A call alone in its iteration
still runs at once: the batch is flushed by the loop's next callback, not by a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")
R = TypeVar("R")

BatchRunner = Callable[[K, list[I]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[K, I, R]):
    """Groups `submit`ted items by key; `run(key, items)` answers each item in order, with a result or
    an exception for that item alone. An exception raised by `run` itself fails the whole batch.

    Each batch runs in a task this object owns: a caller that gives up (its deadline passed) does not
    cancel the others' work. `aclose` waits for the batches under way.
    """

    def __init__(self, run: BatchRunner[K, I, R], max_batch: int = 1000) -> None:
        self._run = run
        self._max = max_batch
        self._open: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = []
            loop.call_soon(self._flush, key, batch)
        batch.append((item, future))
        if len(batch) >= self._max:
            self._flush(key, batch)
        # Shielded: a caller cancelled by its deadline must not cancel the future the batch will set.
        return await asyncio.shield(future)

    def _flush(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        if self._open.get(key) is not batch:
            return  # already flushed when it filled up
        del self._open[key]
        task = asyncio.get_running_loop().create_task(self._execute(key, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
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
