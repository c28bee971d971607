"""Jepsen-style histories of `UpdateScore` calls on an increment board, and the counter rule that checks them.

Every call a client makes is logged as an `Op` with its outcome:

- ``ok``: the router answered; the update is in (once);
- ``failed``: a definite refusal (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE): nothing was applied;
- ``unknown``: anything else (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, a dead router ...): it may or may not be in.

The counter rule (invariant 3 of docs/architecture.md), per member, counting each request id once however
often it was sent:
final score == Σ deltas of the acknowledged request ids + Σ deltas of SOME subset of the request ids whose
every attempt had an unknown outcome. Every applied update bumps the member's index version by one, so the
version pins the size of that subset too: final version == #acknowledged ids + #ids of the subset. An id
applied twice, or an acknowledged update lost, breaks the rule.

Also imported by the writer processes (spawned): at import it needs only grpc, redis and the generated stubs.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import redis

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
DEFINITE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}


@dataclass(frozen=True, slots=True)
class Op:
    """One attempt of one update."""

    member: str
    delta: int
    request_id: str
    outcome: str  # OK | FAILED | UNKNOWN
    code: str  # the gRPC status code's name
    router: str = ""
    score: int | None = None  # the answer, when OK
    applied: bool | None = None
    rank: int | None = None
    detail: str = ""  # the error's message, for diagnostics
    sent: float = 0.0  # wall-clock time the call was made, and how long it took
    took: float = 0.0


def update(
    stub: pb_grpc.LeaderboardStub,
    board: str,
    member: str,
    delta: int,
    request_id: str,
    timeout: float,
    router: str = "",
    wait_for_ready: bool = False,
) -> Op:
    """One `UpdateScore` call, logged whatever happens. `wait_for_ready`: a call to a router being restarted
    waits for it (within its deadline) instead of failing at once with "connection refused"."""
    request = pb.UpdateScoreRequest(leaderboard=board, user_id=member, score=delta, request_id=request_id)
    sent = time.time()
    try:
        reply = stub.UpdateScore(request, timeout=timeout, wait_for_ready=wait_for_ready)
    except grpc.RpcError as exc:
        return failed_op(member, delta, request_id, exc, router, sent)
    return Op(
        member,
        delta,
        request_id,
        OK,
        "OK",
        router,
        reply.score,
        reply.applied,
        reply.rank,
        sent=sent,
        took=time.time() - sent,
    )


def failed_op(member: str, delta: int, request_id: str, exc: grpc.RpcError, router: str = "", sent: float = 0.0) -> Op:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = (exc.details() or "") if isinstance(exc, grpc.Call) else repr(exc)
    return Op(
        member,
        delta,
        request_id,
        FAILED if code in DEFINITE else UNKNOWN,
        code.name,
        router,
        detail=detail[:300],
        sent=sent,
        took=time.time() - sent if sent else 0.0,
    )


def subset_sums(deltas: Sequence[int]) -> set[tuple[int, int]]:
    """Every (size, sum) of a subset of `deltas`: a DP bounded by len × (range of sums), exact."""
    reachable = {(0, 0)}
    for d in deltas:
        reachable |= {(k + 1, s + d) for k, s in reachable}
    return reachable


@dataclass(frozen=True, slots=True)
class Final:
    """A member's state at the end, from its index entry; None in `finals` for a member never created."""

    score: int
    version: int
    moving: bool = field(default=False, compare=False)


def check_counter(ops: Iterable[Op], finals: Mapping[str, Final | None]) -> list[str]:
    """Every violation of the counter rule and of per-request-id idempotency; empty when the history is sound."""
    problems: list[str] = []
    by_member: dict[str, dict[str, list[Op]]] = defaultdict(lambda: defaultdict(list))
    for op in ops:
        by_member[op.member][op.request_id].append(op)
    for member in sorted(set(by_member) | set(finals)):
        attempts = by_member.get(member, {})
        acked: dict[str, int] = {}
        unknown: dict[str, int] = {}
        for rid, tries in attempts.items():
            if len({t.delta for t in tries}) != 1:
                problems.append(
                    f"{member}: the history itself is bad: {rid!r} sent with deltas {[t.delta for t in tries]}"
                )
                continue
            delta = tries[0].delta
            answers = [t for t in tries if t.outcome == OK]
            if answers:
                acked[rid] = delta
                problems += _idempotency(member, rid, tries, answers)
            elif any(t.outcome == UNKNOWN for t in tries):
                unknown[rid] = delta
        final = finals.get(member)
        score, version = (final.score, final.version) if final else (0, 0)
        if final is None and acked:
            problems.append(
                f"{member}: absent at the end, but {len(acked)} update(s) were acknowledged: {sorted(acked)}"
            )
            continue
        rest, extra = score - sum(acked.values()), version - len(acked)
        reachable = subset_sums(list(unknown.values()))
        if not any(s == rest for _, s in reachable):
            problems.append(
                f"{member}: final score {score} != acknowledged sum {sum(acked.values())} ({len(acked)} ids) + any "
                f"subset of the unknown deltas {sorted(unknown.values())}"
            )
        elif final is not None and (extra, rest) not in reachable:
            problems.append(
                f"{member}: final version {version} says {extra} unacknowledged update(s) were applied, but no "
                f"{extra} of the unknown deltas {sorted(unknown.values())} sum to {rest} (score {score}, "
                f"acknowledged {len(acked)} ids summing to {sum(acked.values())})"
            )
    return problems


def _idempotency(member: str, rid: str, tries: list[Op], answers: list[Op]) -> list[str]:
    """A request id's answers: all the first call's result, at most one `applied`, and a duplicate only
    after some attempt that may have applied it."""
    problems = []
    if len({a.score for a in answers}) != 1:
        problems.append(f"{member}: {rid!r} answered with different scores {[a.score for a in answers]}")
    applied = sum(1 for a in answers if a.applied)
    if applied > 1:
        problems.append(f"{member}: {rid!r} was applied {applied} times (applied=true in {applied} answers)")
    if applied == 0 and all(t.outcome == OK for t in tries):
        problems.append(f"{member}: {rid!r} answered only as a duplicate (applied=false), yet no attempt applied it")
    return problems


def read_finals(
    node_addresses: Sequence[str], board: str, members: Iterable[str], allow_moving: bool = False
) -> dict[str, Final | None]:
    """Each member's score and version from its index entry (the authoritative copy), straight off the nodes;
    every member of the board, and None for those of `members` it does not hold."""
    from rankshard.shard_node import IndexEntry
    from rankshard.shard_node._keys import index_pattern

    found: dict[str, Final] = {}
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
            for key in r.scan_iter(index_pattern(board)):
                for user, raw in r.hgetall(key).items():
                    entry = IndexEntry.parse(user, raw)
                    if entry is not None:
                        assert allow_moving or not entry.moving, f"{user} still has a pending move: {raw}"
                        found[user] = Final(entry.score, entry.version, entry.moving)
    return {m: found.get(m) for m in members} | found


def expected_top(scores: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """The single sorted list of a descending board, with competition ranks."""
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    return [(u, s, 1 + sum(1 for v in scores.values() if v > s)) for u, s in ordered]


def top(stub: pb_grpc.LeaderboardStub, board: str) -> tuple[list[tuple[str, int, int]], int]:
    reply = stub.GetTop(pb.GetTopRequest(leaderboard=board, limit=1000), timeout=10)
    return [(e.user_id, e.score, e.rank) for e in reply.entries], reply.total


def next_delta(rng: random.Random, last: int | None, low: int, high: int) -> int:
    """A nonzero delta in ±30 that pulls a member back into [low, high] so it keeps crossing boundaries."""
    if last is not None and last > high:
        return -rng.randint(1, 30)
    if last is not None and last < low:
        return rng.randint(1, 30)
    return rng.choice([d for d in range(-30, 31) if d])


def short_deadline(rng: random.Random) -> float:
    """A deadline a call may or may not meet: 50 µs to 10 ms, log-uniform. About a third lie below what any call
    takes (they expire before or as the call is sent: outcomes unknown, never applied), the rest end calls at every
    point of their way through the router, so a faster router still leaves unknown outcomes in every history."""
    return 10 ** rng.uniform(-4.3, -2.0)


def writer(
    worker: int,
    ports: Sequence[int],
    board: str,
    members: Sequence[str],
    requests: int,
    pace: float,
    seed: int,
    barrier: object,
    results: object,
) -> None:
    """A client process: `requests` updates to hot `members` through the routers on `ports`, each with its
    own request id, one every `pace` seconds; some with a short deadline (unknown outcomes), some resent (to
    either router, or to both at once). Puts its list of `Op`s on the `results` queue.

    The pace matters: a request id is recognised only while among the member's last 8 updates (docs/api.md), so a
    resend that reaches the index after 8 other updates of its member may rightly be applied again. A router
    stalled for 100 ms on this 2-core machine is common, so the writers together give each member at most
    about 10 updates a second."""
    rng = random.Random(seed)
    # Reconnect fast to a router restarted on its port (the default backoff waits a second or more).
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 300),
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{p}", options=options) for p in ports]
    stubs = [pb_grpc.LeaderboardStub(c) for c in channels]
    names = [f"router{i}" for i in range(len(ports))]
    last: dict[str, int] = {}
    ops: list[Op] = []
    try:
        for c in channels:
            grpc.channel_ready_future(c).result(timeout=30)
        barrier.wait(60)  # type: ignore[attr-defined]
        start = time.monotonic()
        for i in range(requests):
            time.sleep(max(0.0, start + i * pace - time.monotonic()))  # load shaping, not synchronisation
            member, rid = rng.choice(members), f"w{worker}-{i}"
            delta = next_delta(rng, last.get(member), -60, 110)
            first = rng.randrange(len(stubs))
            if rng.random() < 0.08:
                # The same request to every router at the same moment.
                # (Never waiting for a router to come back: see the dedup window below.)
                request = pb.UpdateScoreRequest(leaderboard=board, user_id=member, score=delta, request_id=rid)
                sent = time.time()
                futures = [s.UpdateScore.future(request, timeout=10) for s in stubs]
                for name, future in zip(names, futures, strict=True):
                    try:
                        reply = future.result()
                        ops.append(
                            Op(
                                member,
                                delta,
                                rid,
                                OK,
                                "OK",
                                name,
                                reply.score,
                                reply.applied,
                                reply.rank,
                                sent=sent,
                                took=time.time() - sent,
                            )
                        )
                    except grpc.RpcError as exc:
                        ops.append(failed_op(member, delta, rid, exc, name, sent))
            else:
                timeout = short_deadline(rng) if rng.random() < 0.2 else 10.0
                ops.append(update(stubs[first], board, member, delta, rid, timeout, names[first], wait_for_ready=True))
                # A client that lost the answer (or never got one) resends at once: same id, same delta. A resend
                # never waits for a router to come back: a request id is recognised only while among the member's
                # last 8 updates (docs/api.md), and the other writers make that many in well under a second.
                if rng.random() < (0.5 if ops[-1].outcome == UNKNOWN else 0.15):
                    again = (first + 1) % len(stubs) if rng.random() < 0.5 else first
                    timeout = short_deadline(rng) if rng.random() < 0.1 else 10.0
                    ops.append(update(stubs[again], board, member, delta, rid, timeout, names[again]))
            answered = [o for o in ops[-2:] if o.request_id == rid and o.outcome == OK]
            if answered:
                last[member] = answered[-1].score  # type: ignore[assignment]
        results.put((worker, ops))  # type: ignore[attr-defined]
    except BaseException:  # the parent reports it (as text: not every exception pickles)
        results.put((worker, RuntimeError(traceback.format_exc())))  # type: ignore[attr-defined]
        raise
    finally:
        for c in channels:
            c.close()


def poll(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    every: float = 0.05,
    report: Callable[[], str] = lambda: "",
) -> object:
    """Calls `condition()` until it returns something truthy, or fails the test after `timeout` seconds
    (with `report()` in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {timeout}s waiting for {what}\n{report()}"
        time.sleep(every)


def check_board(dsn: str, board: str, *options: str) -> tuple[int, str]:
    """`rankshard check -l BOARD`: (exit code, output)."""
    from click.testing import CliRunner

    from rankshard.cli import main

    result = CliRunner().invoke(main, ["--control-plane", dsn, "check", "-l", board, *options])
    return result.exit_code, result.output


def wait_clean(dsn: str, board: str, timeout: float = 30) -> None:
    """Polls `rankshard check` until it exits 0; fails with its last report after `timeout` seconds."""
    last = [""]

    def clean() -> bool:
        code, last[0] = check_board(dsn, board)
        return code == 0

    poll(clean, timeout, f"rankshard check of {board!r} to pass", report=lambda: last[0])
