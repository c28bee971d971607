"""The restart policy of `cluster up` (`cli._supervisor.Backoff`): pure, so the clock is passed in.

What an SRE relies on: a crash is answered within half a second, a crash loop does not spin, a process that has
been healthy for a while is again restarted promptly, and one that keeps dying is given up on."""

from __future__ import annotations

from rankshard.cli._supervisor import Backoff, RestartPolicy

POLICY = RestartPolicy(first=0.5, cap=8.0, stable_after=10.0, deaths=5, window=60.0)


def test_restarts_back_off_by_doubling_up_to_the_cap() -> None:
    backoff = Backoff(RestartPolicy(first=0.5, cap=4.0, deaths=100), up_since=0.0)
    now, delays = 1.0, []
    for _ in range(6):  # every restart fails at once: nothing is up in between
        delay = backoff.died(now)
        assert delay is not None
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_process_that_stayed_up_is_restarted_promptly_again() -> None:
    backoff = Backoff(POLICY, up_since=0.0)
    assert backoff.died(1.0) == 0.5
    backoff.started(1.5)
    assert backoff.died(2.0) == 1.0  # up only briefly: still backing off
    backoff.started(3.0)
    assert backoff.died(3.0 + POLICY.stable_after) == 0.5


def test_five_deaths_within_a_minute_give_up() -> None:
    backoff = Backoff(POLICY, up_since=0.0)
    for at in (1.0, 12.0, 23.0, 34.0):  # each after a healthy spell: promptly restarted every time
        assert backoff.died(at) == 0.5
        backoff.started(at + 0.5)
    assert backoff.died(45.0) is None


def test_deaths_older_than_the_window_are_forgotten() -> None:
    backoff = Backoff(POLICY, up_since=0.0)
    for at in (1.0, 20.0, 40.0, 60.0, 80.0, 100.0):  # never more than 4 within any 60 s
        assert backoff.died(at) is not None
        backoff.started(at + 0.5)
