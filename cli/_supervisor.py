"""Keeps a local cluster's processes running: one that dies is restarted after a backoff, and one that keeps
dying stops the whole cluster, named, with its exit code and the end of its log.

The policy: the first restart comes `first` seconds after a death, each further one waits twice as long, up to
`cap`; a process that has stayed up `stable_after` seconds starts again from `first`. A process that dies `deaths`
times within `window` seconds (a failed restart counts) is given up on. `RestartPolicy.of` takes them from the
settings (`restart_*`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rankshard.shard_map import DEFAULTS, Settings

from ._local import log_tail

POLL_SECONDS = 0.2
TAIL_LINES = 20


class Supervised(Protocol):
    """A process of the cluster, as the supervisor sees it."""

    @property
    def name(self) -> str:
        """What it is and where, for the log: ``node n2 (127.0.0.1:6380)``."""

    @property
    def log_path(self) -> Path: ...

    @property
    def exit_code(self) -> int | None:
        """None while it runs; else how it ended (negative: the signal that killed it)."""

    def start(self) -> None:
        """Starts it again on the same port and data; raises RuntimeError when it does not come up."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    first: float = DEFAULTS.restart_delay
    cap: float = DEFAULTS.restart_max_delay
    stable_after: float = DEFAULTS.restart_stable_after
    deaths: int = DEFAULTS.restart_max_deaths
    window: float = DEFAULTS.restart_window

    @classmethod
    def of(cls, settings: Settings) -> RestartPolicy:
        return cls(
            settings.restart_delay,
            settings.restart_max_delay,
            settings.restart_stable_after,
            settings.restart_max_deaths,
            settings.restart_window,
        )


@dataclass(slots=True)
class Backoff:
    """One process's restart schedule. Pure: the caller passes the clock."""

    policy: RestartPolicy
    up_since: float | None  # None while it is down (a failed restart does not count as up)
    delay: float = 0.0
    deaths: deque[float] = field(default_factory=deque)

    def started(self, now: float) -> None:
        self.up_since = now

    def died(self, now: float) -> float | None:
        """The wait before the next start, or None when it has died too often to try again."""
        if self.up_since is not None and now - self.up_since >= self.policy.stable_after:
            self.delay = 0.0
        self.up_since = None
        self.deaths.append(now)
        while self.deaths[0] <= now - self.policy.window:
            self.deaths.popleft()
        if len(self.deaths) >= self.policy.deaths:
            return None
        self.delay = min(2 * self.delay, self.policy.cap) if self.delay else self.policy.first
        return self.delay


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The outcome when a process kept dying."""

    name: str
    exit_code: int | None
    deaths: int
    window: float
    log_path: Path

    def __str__(self) -> str:
        return (
            f"{self.name} keeps dying: {self.deaths} exits within {self.window:g} s, the last with exit code "
            f"{self.exit_code}; its log: {self.log_path}"
        )

    def log_lines(self) -> list[str]:
        """The last lines of its log (blank ones left out)."""
        return [line for line in log_tail(self.log_path).splitlines() if line.strip()][-TAIL_LINES:]


@dataclass(slots=True)
class _Watch:
    child: Supervised
    backoff: Backoff
    exit_code: int | None = None
    restart_at: float | None = None


def supervise(
    children: Sequence[Supervised],
    stop_requested: Callable[[], bool],
    say: Callable[[str], None],
    policy: RestartPolicy = RestartPolicy(),
    joined: Callable[[], Sequence[Supervised]] = lambda: (),
) -> GaveUp | None:
    """Watches `children` (restarting, in their order, those that die) until `stop_requested()` (returns None) or
    one keeps dying (returns how). Logs one line per restart through `say`. Stops nothing itself.

    Each round, `joined()` gives the processes started since the last round (a node `nodes add --local` asked
    for): they are watched from then on, after the others."""
    watches = [_Watch(child, Backoff(policy, up_since=time.monotonic())) for child in children]
    while not stop_requested():
        for child in joined():
            say(f"rankshard: {child.name} joined the cluster")
            watches.append(_Watch(child, Backoff(policy, up_since=time.monotonic())))
        for watch in watches:
            if stop_requested():
                return None
            if gave_up := _tend(watch, say):
                return gave_up
        time.sleep(POLL_SECONDS)  # polling: a child's death has no signal of its own here
    return None


def _tend(watch: _Watch, say: Callable[[str], None]) -> GaveUp | None:
    """Notices a death, or carries out a restart that is due."""
    if watch.restart_at is None:
        if (code := watch.child.exit_code) is not None:
            return _schedule(watch, code, time.monotonic())
    elif time.monotonic() >= watch.restart_at:
        watch.restart_at, previous = None, watch.exit_code
        try:
            watch.child.start()
        except RuntimeError:
            gave_up = _schedule(watch, watch.child.exit_code, time.monotonic())
            if gave_up is None:
                say(
                    f"rankshard: {watch.child.name} exited with code {previous}; restart failed (exit code "
                    f"{watch.exit_code}), next try in {watch.backoff.delay:g} s"
                )
            return gave_up
        watch.backoff.started(time.monotonic())
        say(f"rankshard: {watch.child.name} exited with code {previous}; restarted")
    return None


def _schedule(watch: _Watch, code: int | None, now: float) -> GaveUp | None:
    """Records a death; schedules the restart, or gives up."""
    delay = watch.backoff.died(now)
    if delay is None:
        policy = watch.backoff.policy
        return GaveUp(watch.child.name, code, policy.deaths, policy.window, watch.child.log_path)
    watch.exit_code = code
    watch.restart_at = now + delay
    return None
