"""RESP2 over one asyncio connection: commands go out pipelined, replies come back in order.

`NodeConnection.send` queues already-encoded commands (`hiredis.pack_command`) and returns a future for
their replies. Everything sent during one event-loop iteration leaves in a single `transport.write`
(auto-pipelining), so many concurrent callers share each round trip and each system call.

Replies are parsed by `hiredis.Reader` and decoded as UTF-8 str, the way redis-py's
``decode_responses=True`` does: status and bulk strings are str, integers int, nil None, arrays lists,
and an error reply is a `ReplyError` value (not raised), also inside arrays.

Failures are builtin exceptions set on the waiting futures, for the client to translate:

- `ConnectionError` (or another `OSError`): the connection was lost, refused or its reply stream could
  not be parsed. The connection is closed and every command waiting on it fails.
- `TimeoutError`: a command had no complete reply within the connection's timeout. Replies after it
  would be matched to the wrong commands, so the connection is closed and every command waiting on it
  fails with `TimeoutError` too: they were all queued behind the node that stopped answering.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis

_REDIS_CODES = frozenset(
    {"ERR", "OOM", "WRONGPASS", "EXECABORT", "LOADING", "NOSCRIPT", "READONLY", "NOAUTH", "NOPERM"}
)


class ReplyError(Exception):
    """An error reply. `code` is its first word (``ERR``, ``NOSCRIPT``, ``LOADING``, ...); like redis-py,
    `str()` leaves out a well-known code and keeps any other, so messages read as they did before."""

    def __init__(self, reply: str) -> None:
        code, _, rest = reply.partition(" ")
        self.code = code
        super().__init__(rest if code in _REDIS_CODES else reply)


LAZY_FLUSH = 0.02
"""Seconds a lazy payload waits at most for another to leave with. On a loaded router the next command
to the node comes sooner, and each write saved is a system call plus a wake-up of the node (measured
here: about 20 µs of router CPU per write, and 140 µs of wall time, as the node takes the core). 2 ms was
shorter than the gap between writes to one index node at moderate load (a few hundred updates/s), now that an
update's count no longer asks its index node again: its mark's clearing went alone (node reads per update,
UpdateScore alone at 600/s: 2.8 with 2 ms, 2.45 with 20 ms). Housekeeping only: a mark cleared later costs
nothing but its bytes meanwhile."""


class NodeConnection(asyncio.Protocol):
    """One connection to a node. Open with `open`; `send` never blocks; `close` fails what is waiting."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
        self._transport: asyncio.Transport | None = None
        # One entry per `send`: (future, `replies`, deadline). Replies arrive in this order.
        self._pending: deque[tuple[asyncio.Future[Any], int, float]] = deque()
        self._replies: list[Any] = []  # the head entry's replies so far, when it wants more than one
        self._out: list[bytes] = []
        self._flush_soon = False  # a `_flush` is scheduled for this loop iteration
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.is_open = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        timeout: float,  # noqa: ASYNC109 -- configures the connection (every command's wait), not this call
    ) -> NodeConnection:
        """Connects within `timeout` seconds; raises `OSError` (`TimeoutError` when it took too long)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: cls(timeout), host, port)
        return protocol

    def send(self, payload: bytes, replies: int = 0, *, lazy: bool = False) -> asyncio.Future[Any]:
        """Queues `payload`: one encoded command (``replies=0``), whose reply is the future's result, or
        `replies` (at least 1) commands, whose list of replies is. The future fails as the module
        docstring says. A `lazy` payload (housekeeping nobody waits on) leaves with the next one that
        is not, or after LAZY_FLUSH seconds, whichever comes first."""
        future = self._loop.create_future()
        if not self.is_open:
            future.set_exception(ConnectionResetError("connection closed"))
            return future
        deadline = self._loop.time() + self._timeout
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
        self._pending.append((future, replies, deadline))
        self._out.append(payload)
        if self._flush_soon:
            pass
        elif not lazy:
            # Written once this loop iteration's callers have all queued theirs: one system call for
            # all of them (measured: 1.5-1.8x the commands/s of writing each at once).
            self._flush_soon = True
            self._loop.call_soon(self._flush)
        elif self._lazy_timer is None:
            self._lazy_timer = self._loop.call_later(LAZY_FLUSH, self._flush)
        return future

    def close(
        self,
        kind: type[OSError] = ConnectionResetError,
        why: str = "connection closed",
        cause: BaseException | None = None,
    ) -> None:
        """Closes at once; every waiting command fails with ``kind(why)``."""
        if not self.is_open:
            return
        self.is_open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        self._out.clear()
        pending, self._pending = self._pending, deque()
        self._replies = []
        for future, _, _ in pending:
            if not future.done():
                exc = kind(why)
                exc.__cause__ = cause
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self.is_open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionResetError, f"connection lost: {exc}" if exc else "connection closed by the node", exc)

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            return
        reader, pending = self._reader, self._pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except (hiredis.ProtocolError, UnicodeDecodeError) as exc:
                return self.close(ConnectionError, f"unreadable reply: {exc}", exc)
            if reply is False:
                return
            if not pending:
                return self.close(ConnectionError, f"a reply nobody asked for: {reply!r}")
            future, count, _ = pending[0]
            if count:
                self._replies.append(reply)
                if len(self._replies) < count:
                    continue
                reply, self._replies = self._replies, []
            pending.popleft()
            if not future.done():  # a caller that gave up (cancelled) leaves its reply unread
                future.set_result(reply)

    # ---- internals ----

    def _flush(self) -> None:
        self._flush_soon = False
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self.is_open and self._out:
            assert self._transport is not None
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_deadline(self) -> None:
        # One timer per connection, not per command: it only ever needs the oldest command's deadline.
        self._watchdog = None
        if not self._pending:
            return
        deadline = self._pending[0][2]
        if self._loop.time() >= deadline - 0.001:  # timers may fire a hair early
            self.close(TimeoutError, f"no reply within {self._timeout}s")
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
