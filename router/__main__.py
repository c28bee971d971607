"""``python -m rankshard.router --control-plane DSN [--host H] [--port P] [--reuse-port] [SETTINGS]``: one router.

Every setting the router uses (`rankshard.shard_map.Settings`) has a flag here, which overrides its
``RANKSHARD_<NAME>`` variable, which overrides the default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from rankshard.shard_map import ROUTER, RankshardError, Settings, SettingsError, SettingSpec, setting_specs
from rankshard.shard_node import StepHook

from ._metrics import MetricsListenError
from ._security import SecurityError
from ._server import ListenError, serve


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(vars(args))
    except SettingsError as exc:
        parser.error(str(exc))
    if not settings.control_plane:
        parser.error("--control-plane (or RANKSHARD_CONTROL_PLANE) is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s router[%(process)d] %(levelname)s %(message)s")
    on_step = _crash_at(settings.crash_at) if settings.crash_at else None
    try:
        _run(
            serve(
                settings.control_plane,
                args.host,
                args.port,
                settings=settings,
                on_step=on_step,
                reuse_port=args.reuse_port,
            )
        )
    except (RankshardError, ListenError, SecurityError, MetricsListenError) as exc:
        print(f"rankshard router: {exc}", file=sys.stderr)
        return 1
    return 0


def settings_from(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """The router's settings: the defaults, overridden by `environ` (default: the process's), overridden by the
    setting `flags` given (parsed command-line values by setting name; None: not given).

    Raises `SettingsError` naming the variable whose value is wrong.
    """
    given = {spec.name: flags[spec.name] for spec in _flagged() if flags.get(spec.name) is not None}
    return dataclasses.replace(Settings.from_env(environ), **given)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rankshard.router",
        description="One rankshard router. Each setting's flag overrides its environment variable, which overrides "
        "the default (docs/operations.md lists every setting).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=50051, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share --port with the other routers of this cluster (SO_REUSEPORT); without it, a port "
        "another process serves is refused",
    )
    for spec in _flagged():
        parser.add_argument(
            spec.flag,
            type=_flag_type(spec),
            default=None,
            metavar=spec.metavar,
            help=f"{spec.meaning} (env {spec.env}; default: {_shown(spec.default)})",
        )
    return parser


def _flagged() -> tuple[SettingSpec, ...]:
    return tuple(spec for spec in setting_specs(ROUTER) if spec.has_flag)


def _flag_type(spec: SettingSpec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:  # argparse names the flag before it
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = spec.name  # what argparse calls the type in its own messages
    return parse


def _shown(default: object) -> str:
    return "unset" if default is None else str(default)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` on uvloop when it is installed (measured: more calls/s), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _crash_at(spec: str) -> StepHook:
    """The hook of `Settings.crash_at` (``STEP`` or ``STEP:N``): SIGKILLs this process right after the N-th
    (default first) time a write reaches that step of shard_node.MOVE_STEPS."""
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
