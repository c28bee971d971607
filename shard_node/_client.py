"""One Redis-protocol data node, as rankshard talks to it.

The only module that talks to nodes: every failure is translated here into `NodeUnavailable` (the node
is down, unreachable, too slow, or refused a command) so nothing above sees protocol types. Commands go
over a few long-lived `NodeConnection`s (`_resp.py`) that pipeline everything sent in one event-loop
iteration, so concurrent callers share round trips.
Scripts are called by SHA; a node that lost its script cache (a restart) gets them loaded again and
only the calls that failed for that reason are re-sent, so nothing runs twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from hiredis import pack_command

from rankshard.shard_map import DEFAULTS, NodeUnavailable

from ._replies import command_reply
from ._resp import NodeConnection, ReplyError
from ._scripts import ALL, Script

ScriptCall = tuple[Script, Sequence[str], Sequence[Any]]

DEFAULT_NODE_TIMEOUT = DEFAULTS.node_timeout
"""Seconds a node may take to answer one command before it counts as unavailable (`Settings.node_timeout`)."""

DOWN_FOR = 1.0
"""Seconds a node that just timed out is answered for without asking it: calls fail at once instead of
each waiting out the timeout of a frozen or partitioned node; the first call after that probes it
again. (A refused connection fails fast by itself, so it does not trip this.)"""


NODE_ERROR_KINDS = ("timeout", "connection", "down", "not_serving", "refused")
"""What `NodeObserver.failed` is told: the node did not answer in time; the connection failed (refused, reset);
the node timed out moments ago and was not asked (`DOWN_FOR`); it answered that it is not serving (loading its
data, out of client slots); it refused a command or a script failed on it."""


class NodeObserver(Protocol):
    """Told of every round trip and failure of the `NodeClient`s it is set on (the router's metrics). Its methods
    run on the data path: they must be cheap, and never raise."""

    def round_trip(self, node_id: str, seconds: float) -> None:
        """One pipelined send to the node ended, with its replies or failed, after `seconds`."""

    def failed(self, node_id: str, kind: str) -> None:
        """A command to the node failed; `kind` is one of `NODE_ERROR_KINDS`."""


class NodeClient:
    """Connections to one node, opened on first use and again after they break. Close with `aclose()`
    (or use `async with`). `observer`, when set, is told of every round trip and failure."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        timeout: float = DEFAULT_NODE_TIMEOUT,
        observer: NodeObserver | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.id = node_id
        self.address = address
        self.observer = observer
        self._host, self._port, self._timeout = host, int(port), timeout
        self._down_until = 0.0
        # One connection: it pipelines every concurrent caller, and 2 or 4 measured no faster.
        self._connection: NodeConnection | None = None
        self._connecting = asyncio.Lock()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes every connection; commands still waiting fail with `NodeUnavailable`. The client may be
        used again afterwards: it reconnects."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(ConnectionResetError, "client closed")

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any], *, lazy: bool = False) -> object:
        """Runs one script and returns its raw reply, for `_replies` to decode; raises `NodeUnavailable`.
        `lazy`: housekeeping, it may wait a moment to share a write with other commands (see
        `NodeConnection.send`)."""
        return (await self.run_many([(script, keys, args)], lazy=lazy))[0]

    async def run_many(self, calls: Sequence[ScriptCall], *, lazy: bool = False) -> list[object]:
        """Runs scripts in one pipelined round trip, raw replies in order; raises `NodeUnavailable`."""
        self._check_up()
        return await self._scripts_answered(calls, await self._evalsha(calls, lazy))

    async def commands_then_run(
        self, commands: Sequence[Sequence[Any]], calls: Sequence[ScriptCall]
    ) -> tuple[list[Any], list[object]]:
        """`commands` then `calls` in one pipelined round trip: the commands' replies as `commands` answers them,
        and the scripts' raw replies as `run_many` does; raises `NodeUnavailable`."""
        self._check_up()
        payload = b"".join(pack_command(tuple(c)) for c in commands) + _evalsha_payload(calls)
        replies: list[Any] = await self._send(payload, len(commands) + len(calls))
        for reply in replies:
            if isinstance(reply, ReplyError):
                self._check_serving(reply)
        head, tail = replies[: len(commands)], replies[len(commands) :]
        for reply in head:
            if isinstance(reply, ReplyError):
                raise self._refused(f"refused a command: {reply}") from reply
        answered = [command_reply(c, r) for c, r in zip(commands, head, strict=True)]
        return answered, await self._scripts_answered(calls, tail)

    async def _scripts_answered(self, calls: Sequence[ScriptCall], results: list[Any]) -> list[object]:
        """`results` (the raw replies to `calls`), with the calls a node without the scripts refused sent again once
        they are loaded; raises `NodeUnavailable` for a call the node refused."""
        missing = [i for i, r in enumerate(results) if isinstance(r, ReplyError) and r.code == "NOSCRIPT"]
        if missing:
            await self.load_scripts()
            for i, result in zip(missing, await self._evalsha([calls[i] for i in missing]), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, ReplyError):
                raise self._refused(f"script failed: {result}") from result
        return results

    async def command(self, *args: Any) -> Any:
        """One plain command (reads and admin); raises `NodeUnavailable`."""
        self._check_up()
        reply = await self._send(pack_command(args), 0)
        if isinstance(reply, ReplyError):
            self._check_serving(reply)
            raise self._refused(f"refused {args[0]}: {reply}") from reply
        return command_reply(args, reply)

    async def commands(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Plain commands in one pipelined round trip; raises `NodeUnavailable`."""
        self._check_up()
        if not commands:
            return []
        replies = await self._send(b"".join(pack_command(tuple(c)) for c in commands), len(commands))
        for reply in replies:
            if isinstance(reply, ReplyError):
                self._check_serving(reply)
                raise self._refused(f"refused a command: {reply}") from reply
        return [command_reply(c, r) for c, r in zip(commands, replies, strict=True)]

    async def load_scripts(self) -> None:
        await self.commands([("SCRIPT", "LOAD", s.source) for s in ALL])

    async def _evalsha(self, calls: Sequence[ScriptCall], lazy: bool = False) -> list[Any]:
        """One reply per call: a value, or a `ReplyError` value for a call the node refused."""
        if not calls:
            return []
        replies: list[Any] = await self._send(_evalsha_payload(calls), len(calls), lazy)
        for reply in replies:
            if isinstance(reply, ReplyError):
                self._check_serving(reply)
        return replies

    async def _send(self, payload: bytes, replies: int, lazy: bool = False) -> Any:
        if self.observer is not None:
            return await self._send_observed(self.observer, payload, replies, lazy)
        connection = self._connection
        try:
            if connection is None or not connection.is_open:
                connection = await self._connect()
            return await connection.send(payload, replies, lazy=lazy)
        except OSError as exc:  # ConnectionError, TimeoutError, refused, unreachable
            raise self._went_down(exc) from exc

    async def _send_observed(self, observer: NodeObserver, payload: bytes, replies: int, lazy: bool) -> Any:
        started = time.perf_counter()
        try:
            connection = self._connection
            if connection is None or not connection.is_open:
                connection = await self._connect()
            return await connection.send(payload, replies, lazy=lazy)
        except OSError as exc:
            raise self._went_down(exc) from exc
        finally:
            observer.round_trip(self.id, time.perf_counter() - started)

    async def _connect(self) -> NodeConnection:
        # One caller connects; the others queued on the lock then find the new connection open.
        async with self._connecting:
            self._check_up()  # an attempt we queued behind just timed out: do not wait out another
            connection = self._connection
            if connection is None or not connection.is_open:
                connection = await NodeConnection.open(self._host, self._port, self._timeout)
                self._connection = connection
            return connection

    def _check_serving(self, reply: ReplyError) -> None:
        # A node still loading its data (after a restart) or out of client slots is not serving, as
        # opposed to refusing one command: redis-py counted these as connection errors, and so do we.
        if reply.code == "LOADING" or str(reply) == "max number of clients reached":
            self._failed("not_serving")
            raise NodeUnavailable(self.id, f"{self.address} unreachable: {reply}") from reply

    def _check_up(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            self._failed("down")
            raise NodeUnavailable(self.id, f"{self.address} failed moments ago; retry shortly")

    def _went_down(self, exc: BaseException) -> NodeUnavailable:
        timed_out = isinstance(exc, TimeoutError)
        if timed_out:
            self._down_until = time.monotonic() + DOWN_FOR
        self._failed("timeout" if timed_out else "connection")
        return NodeUnavailable(self.id, f"{self.address} unreachable: {exc}")

    def _refused(self, problem: str) -> NodeUnavailable:
        self._failed("refused")
        return NodeUnavailable(self.id, problem)

    def _failed(self, kind: str) -> None:
        if self.observer is not None:
            self.observer.failed(self.id, kind)


def _evalsha_payload(calls: Sequence[ScriptCall]) -> bytes:
    return b"".join(pack_command(("EVALSHA", s.sha, len(k), *k, *a)) for s, k, a in calls)
