"""The one table from domain errors to gRPC status codes, and the wrapper every handler runs in."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from rankshard.shard_map import (
    AlreadyExists,
    ControlPlaneError,
    InvalidArgument,
    NodeError,
    NotFound,
    OutOfRange,
    RankshardError,
    RequestIdConflict,
    control_plane_deadline,
)

from ._metrics import RouterMetrics
from ._wire import Undecodable

log = logging.getLogger("rankshard.router")

# Most specific first: OutOfRange is an InvalidArgument.
STATUS_OF: tuple[tuple[type[RankshardError], grpc.StatusCode], ...] = (
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (RequestIdConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (NodeError, grpc.StatusCode.UNAVAILABLE),
    (ControlPlaneError, grpc.StatusCode.UNAVAILABLE),
)

_ANSWER_MARGIN = 0.25
"""Seconds (at most a tenth of the call's time) kept back from the control plane's share of a deadline, so that
a control plane that does not answer becomes UNAVAILABLE naming it while the client still listens."""


def _control_plane_budget(seconds: float) -> float:
    return seconds - min(_ANSWER_MARGIN, seconds / 10)


R = TypeVar("R")


class Service(Protocol):
    """What `handler` needs of the servicer it runs in."""

    call_deadline: float
    """Seconds a call may take when its client set no deadline (`Settings.call_deadline`)."""
    metrics: RouterMetrics | None
    """Where each call's method, status code and duration go; None: nowhere (no metrics port)."""


S = TypeVar("S", bound=Service)


def status_of(error: RankshardError) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def handler(
    method: Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Runs a handler within the client's deadline (the servicer's `call_deadline` when it set none) and turns
    errors into statuses.

    Domain errors get their code from `STATUS_OF`; the deadline passing gets DEADLINE_EXCEEDED; a
    bug gets INTERNAL and a log line with the traceback, and the router keeps serving. Each call's method, status
    code and duration go to the servicer's `metrics`, when it has them.
    """
    name = method.__name__

    @functools.wraps(method)
    async def run(self: S, request: Any, context: grpc.aio.ServicerContext) -> R:
        metrics = self.metrics
        started = 0.0 if metrics is None else time.perf_counter()
        try:
            if isinstance(request, Undecodable):
                code, details = grpc.StatusCode.INVALID_ARGUMENT, request.problem
            else:
                try:
                    remaining = context.time_remaining()
                    if remaining is not None:
                        # grpc.aio cancels this task when the client's deadline passes (the client sees
                        # DEADLINE_EXCEEDED): a timer of our own per call would cost about 10 µs for nothing.
                        with control_plane_deadline(_control_plane_budget(remaining)):
                            answer = await method(self, request, context)
                    else:
                        async with asyncio.timeout(self.call_deadline):
                            with control_plane_deadline(_control_plane_budget(self.call_deadline)):
                                answer = await method(self, request, context)
                except RankshardError as exc:
                    code, details = status_of(exc), str(exc)
                except TimeoutError:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    details = f"deadline passed (a call without one gets {self.call_deadline:g} s)"
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("bug in %s", name)
                    code, details = grpc.StatusCode.INTERNAL, f"internal error in {name}"
                else:
                    if metrics is not None:
                        metrics.call_done(name, "OK", time.perf_counter() - started)
                    return answer
        except asyncio.CancelledError:
            if metrics is not None:
                metrics.call_done(name, _cancelled_code(context), time.perf_counter() - started)
            raise
        # Counted before the abort: the status leaves within it, and a client that has it finds it counted.
        if metrics is not None:
            metrics.call_done(name, code.name, time.perf_counter() - started)
        await context.abort(code, details)
        raise AssertionError("unreachable: context.abort raises")

    return run


def _cancelled_code(context: grpc.aio.ServicerContext) -> str:
    """What the client of a cancelled handler saw: grpc.aio cancels it when the client's deadline passes or the
    client goes away."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
