"""One Redis-protocol data node, as rankshard talks to it.

The only module that touches redis-py: every redis exception is translated here into
`NodeUnavailable` (the node is down, unreachable or too slow) so nothing above sees redis types.
Scripts are called by SHA; a node that lost its script cache (a restart) gets them loaded again and
only the calls that failed for that reason are re-sent, so nothing runs twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from shard_map import NodeUnavailable

from ._scripts import ALL, Script

ScriptCall = tuple[Script, Sequence[str], Sequence[Any]]

DEFAULT_NODE_TIMEOUT = 2.0
"""Seconds a node may take to answer one command before it counts as unavailable."""

DOWN_FOR = 1.0
"""Seconds a node that just timed out is answered for without asking it: calls fail at once instead of
each waiting out the timeout of a frozen or partitioned node; the first call after that probes it
again. (A refused connection fails fast by itself, so it does not trip this.)"""


class NodeClient:
    """Connections to one node. Open with `open()`, close with `aclose()` (or use `async with`)."""

    def __init__(self, node_id: str, address: str, *, timeout: float = DEFAULT_NODE_TIMEOUT) -> None:
        host, _, port = address.rpartition(":")
        self.id = node_id
        self.address = address
        self._down_until = 0.0
        self._redis = aioredis.Redis(
            host=host,
            port=int(port),
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            max_connections=256,
        )

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Runs one script; raises `NodeUnavailable`."""
        return (await self.run_many([(script, keys, args)]))[0]

    async def run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Runs scripts in one pipelined round trip, results in order; raises `NodeUnavailable`."""
        self._check_up()
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, rexc.NoScriptError)]
        if missing:
            await self.load_scripts()
            for i, result in zip(missing, await self._pipeline([calls[i] for i in missing])):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise NodeUnavailable(self.id, f"script failed: {result}") from result
        return results

    async def command(self, *args: Any) -> Any:
        """One plain command (reads and admin); raises `NodeUnavailable`."""
        self._check_up()
        try:
            return await self._redis.execute_command(*args)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise self._went_down(exc) from exc
        except rexc.ResponseError as exc:
            raise NodeUnavailable(self.id, f"refused {args[0]}: {exc}") from exc

    async def commands(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Plain commands in one pipelined round trip; raises `NodeUnavailable`."""
        self._check_up()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args in commands:
                    pipe.execute_command(*args)
                return await pipe.execute()
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise self._went_down(exc) from exc
        except rexc.ResponseError as exc:
            raise NodeUnavailable(self.id, f"refused a command: {exc}") from exc

    async def load_scripts(self) -> None:
        await self.commands([("SCRIPT", "LOAD", s.source) for s in ALL])

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                return await pipe.execute(raise_on_error=False)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise self._went_down(exc) from exc

    def _check_up(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise NodeUnavailable(self.id, f"{self.address} failed moments ago; retry shortly")

    def _went_down(self, exc: BaseException) -> NodeUnavailable:
        if isinstance(exc, (rexc.TimeoutError, TimeoutError)):
            self._down_until = time.monotonic() + DOWN_FOR
        return NodeUnavailable(self.id, f"{self.address} unreachable: {exc}")
