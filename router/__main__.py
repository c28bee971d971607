"""``python -m rankshard.router --control-plane DSN [--host H] [--port P] [--reuse-port]``: one router process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from rankshard.shard_map import RankshardError

from ._server import ListenError, serve
from ._sweeper import DEFAULT_INTERVAL

CRASH_ENV = "RANKSHARD_CRASH_AT"
"""Fault injection for tests: ``STEP`` or ``STEP:N`` makes this process SIGKILL itself right after the
N-th (default first) time a write reaches that step of shard_node.MOVE_STEPS."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rankshard.router", description=__doc__)
    parser.add_argument("--control-plane", default=os.environ.get("RANKSHARD_CONTROL_PLANE"), help="PostgreSQL DSN")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share --port with the other routers of this cluster (SO_REUSEPORT); without it, a port "
        "another process serves is refused",
    )
    parser.add_argument("--sweep-interval", type=float, default=DEFAULT_INTERVAL, help="seconds between sweeps")
    parser.add_argument(
        "--sweep-age-ms", type=int, default=5000, help="age at which a pending move counts as abandoned"
    )
    args = parser.parse_args(argv)
    if not args.control_plane:
        parser.error("--control-plane (or RANKSHARD_CONTROL_PLANE) is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s router[%(process)d] %(levelname)s %(message)s")
    options = {"sweep_interval": args.sweep_interval, "sweep_age_ms": args.sweep_age_ms, "reuse_port": args.reuse_port}
    if os.environ.get(CRASH_ENV):
        options["on_step"] = _crash_at(os.environ[CRASH_ENV])
    try:
        _run(serve(args.control_plane, args.host, args.port, **options))
    except (RankshardError, ListenError) as exc:
        print(f"rankshard router: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` on uvloop when it is installed (measured: more calls/s), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _crash_at(spec: str):  # type: ignore[no-untyped-def]
    step, _, nth = spec.partition(":")
    remaining = [int(nth or 1)]

    def hook(reached: str) -> None:
        if reached == step:
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    sys.exit(main())
