"""Concurrent writers through several router processes (docs/architecture.md invariants 2, 3 and 4, and Idempotency).

Writer processes hammer a few hot members of an increment board whose ranges are narrow, so members keep crossing
boundaries; some calls get deadlines too short to finish (unknown outcomes), some are resent with their request id
(to the same router, the other one, or both at once). Histories are checked with Jepsen's counter rule (see
`_jepsen`): nothing acknowledged is lost, nothing is applied twice, and whatever a request with an unknown outcome
did, it did at most once. Then `rankshard check` must pass and reads must equal the single sorted list.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from _jepsen import (
    OK,
    UNKNOWN,
    Final,
    Op,
    check_board,
    check_counter,
    expected_top,
    failed_op,
    poll,
    read_finals,
    top,
    wait_clean,
    writer,
)
from _processes import RouterProcess
from _router import Client, bootstrap

from rankshard.shard_node import MOVE_STEPS
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "hot"
BOUNDARIES = [-50, 0, 50, 100]
MEMBERS = [f"m{i}" for i in range(6)]
WORKERS = 3
REQUESTS = 150  # per worker
PACE = 0.05  # seconds between a worker's requests: each member gets about 10 updates a second (see `writer`)


@pytest.fixture
def two_routers(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[list[RouterProcess]]:
    """Two router processes on their own ports; their sweepers finish abandoned moves after 300 ms."""
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    routers: list[RouterProcess] = []
    try:
        for _ in range(2):
            routers.append(RouterProcess(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=300).start())
        client = Client(routers[0].port)
        try:
            client.create(BOARD, boundaries=BOUNDARIES)
        finally:
            client.close()
        yield routers
    finally:
        for r in routers:
            r.stop()


def _assert_reads_match(port: int, finals: dict[str, Final | None]) -> None:
    """Invariant 4: GetTop and GetRanks equal the single sorted list of the final (index) scores."""
    scores = {m: f.score for m, f in finals.items() if f is not None}
    client = Client(port)
    try:
        entries, total = top(client.lb, BOARD)
        assert (entries, total) == (expected_top(scores), len(scores))
        ranks = client.lb.GetRanks(pb.GetRanksRequest(leaderboard=BOARD, user_ids=sorted(scores)), timeout=10)
        assert [(e.user_id, e.score, e.rank) for e in ranks.entries] == expected_top(scores)
    finally:
        client.close()


def _run_writers(ports: list[int], requests: int = REQUESTS) -> list[Op]:
    """`WORKERS` writer processes (spawned, each with its own channels) against the routers on `ports`, started
    together; their merged history."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=writer, args=(w, ports, BOARD, MEMBERS, requests, PACE, 1000 + w, barrier, results), daemon=True
        )
        for w in range(WORKERS)
    ]
    for p in workers:
        p.start()
    history: list[Op] = []
    try:
        barrier.wait(90)  # every worker is connected: they start together
        for _ in workers:
            worker, ops = results.get(timeout=90)
            assert not isinstance(ops, BaseException), f"worker {worker} failed: {ops!r}"
            history += ops
        for p in workers:
            p.join(30)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
                p.join(5)
        results.close()
        results.join_thread()
    return history


def _assert_history_holds(dsn: str, node_addresses: list[str], history: list[Op], ports: list[int]) -> Counter[str]:
    """Invariants 2-4 at the end of a run: check clean once the sweepers finished what cut-off calls left,
    the counter rule per member, and reads equal to the sorted list. Returns the outcome counts."""
    outcomes = Counter(op.outcome for op in history)
    assert all(op.code != "FAILED_PRECONDITION" for op in history), "a resend with the same value was refused"
    # Calls cut off by their deadline (or their router's death) may leave moves behind: the sweepers finish them.
    poll(
        lambda: (
            not any(f and f.moving for f in read_finals(node_addresses, BOARD, MEMBERS, allow_moving=True).values())
        ),
        30,
        "the sweepers to finish every abandoned move",
    )
    finals = read_finals(node_addresses, BOARD, MEMBERS)
    problems = check_counter(history, finals)
    assert not problems, "\n".join(problems)
    assert set(finals) == set(MEMBERS)
    wait_clean(dsn, BOARD, timeout=10)
    for port in ports:
        _assert_reads_match(port, finals)
    code, out = check_board(dsn, BOARD)
    assert code == 0, out
    return outcomes


def test_concurrent_writers_through_two_routers_lose_nothing_and_apply_nothing_twice(
    control_plane_dsn: str, node_addresses: list[str], two_routers: list[RouterProcess]
) -> None:
    ports = [r.port for r in two_routers]
    history = _run_writers(ports)
    outcomes = Counter(op.outcome for op in history)
    resent = sum(1 for n in Counter((op.member, op.request_id) for op in history).values() if n > 1)
    assert outcomes[OK] > WORKERS * REQUESTS * 0.6, f"too few acknowledged calls to mean anything: {outcomes}"
    assert outcomes[UNKNOWN] > 0 and resent > 10, (
        f"the history lacks unknown outcomes or retries: {outcomes}, {resent} resent"
    )
    _assert_history_holds(control_plane_dsn, node_addresses, history, ports)


def test_concurrent_writers_lose_nothing_while_routers_die_mid_move(
    control_plane_dsn: str, node_addresses: list[str], two_routers: list[RouterProcess]
) -> None:
    """The same workload while each router SIGKILLs itself in the middle of a boundary crossing (every step of
    MOVE_STEPS in turn, the 15th time it reaches it) and is restarted on its port at once."""
    slots = list(two_routers)
    plans = [list(MOVE_STEPS), list(reversed(MOVE_STEPS))]
    exits: list[tuple[str | None, int]] = []  # (the dead router's crash_at, its exit status)

    def restart(i: int) -> None:
        # From the main thread only: a router gets SIGTERM when the thread that started it ends.
        crash_at = f"{plans[i].pop(0)}:15" if plans[i] else None
        slots[i] = RouterProcess(
            control_plane_dsn, port=slots[i].port, crash_at=crash_at, sweep_interval=0.1, sweep_age_ms=300
        )
        two_routers.append(slots[i])  # the fixture stops it
        slots[i].start()

    for i in range(len(slots)):  # the fixture's routers, replaced by ones that crash
        slots[i].stop()
        restart(i)
    histories: list[list[Op]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            histories.append(_run_writers([r.port for r in slots]))
        except BaseException as exc:  # reported below
            failures.append(exc)

    writers = threading.Thread(target=run, name="writers")
    writers.start()
    try:
        while writers.is_alive():  # the supervisor
            for i, router in enumerate(slots):
                assert router.proc is not None
                if router.proc.poll() is not None:
                    exits.append((router.crash_at, router.proc.returncode))
                    router.stop()  # reaps it
                    restart(i)
            writers.join(0.05)
    finally:
        writers.join(120)
    assert not writers.is_alive(), "the writers hung"
    if failures:
        raise failures[0]
    for i, router in enumerate(slots):  # no router may crash from now on
        assert router.proc is not None
        if router.proc.poll() is not None:
            exits.append((router.crash_at, router.proc.returncode))
        if router.crash_at or router.proc.poll() is not None:
            router.stop()
            plans[i] = []
            restart(i)
    # Every router that died was one told to, and it died by its own SIGKILL.
    assert len(exits) >= 4 and all(crash_at and code == -9 for crash_at, code in exits), f"router exits: {exits}"
    outcomes = _assert_history_holds(control_plane_dsn, node_addresses, histories[0], [r.port for r in slots])
    assert outcomes[OK] > WORKERS * REQUESTS * 0.5, f"too few acknowledged calls to mean anything: {outcomes}"


def test_one_request_sent_to_two_routers_at_once_is_applied_once(
    control_plane_dsn: str, node_addresses: list[str], two_routers: list[RouterProcess]
) -> None:
    rounds = 40
    rng = random.Random(7)
    members = MEMBERS[:3]
    plan = []  # (member, delta, request id): deltas up to ±70 cross a boundary almost every round
    for r in range(rounds):
        plan.append((members[r % len(members)], rng.choice([-1, 1]) * rng.randint(20, 70), f"same-{r}"))
    barrier = threading.Barrier(2, timeout=30)
    answers: list[list[Op]] = [[], []]

    def send(i: int) -> None:
        client = Client(two_routers[i].port)
        try:
            grpc.channel_ready_future(client.channel).result(timeout=30)
            for member, delta, rid in plan:
                barrier.wait()
                request = pb.UpdateScoreRequest(leaderboard=BOARD, user_id=member, score=delta, request_id=rid)
                try:
                    reply = client.lb.UpdateScore(request, timeout=10)
                    answers[i].append(
                        Op(member, delta, rid, OK, "OK", f"router{i}", reply.score, reply.applied, reply.rank)
                    )
                except grpc.RpcError as exc:
                    answers[i].append(failed_op(member, delta, rid, exc, f"router{i}"))
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a sender hung"
    assert [len(a) for a in answers] == [rounds, rounds], "a sender stopped early (broken barrier?)"

    expected: dict[str, int] = {}
    for (member, delta, rid), a, b in zip(plan, *answers, strict=True):
        expected[member] = expected.get(member, 0) + delta
        assert (a.outcome, b.outcome) == (OK, OK), f"{rid}: {a.code} / {b.code}"
        assert a.score == b.score == expected[member], (
            f"{rid}: answers {a.score}, {b.score}; applied once gives {expected[member]}"
        )
        assert [a.applied, b.applied].count(True) == 1, f"{rid}: applied flags {a.applied}, {b.applied}"
        # Both answers come after the move finished and nothing else is in flight: the exact rank.
        rank = 1 + sum(1 for s in expected.values() if s > expected[member])
        assert a.rank == b.rank == rank, f"{rid}: ranks {a.rank}, {b.rank}; the sorted list says {rank}"
    wait_clean(control_plane_dsn, BOARD)
    finals = read_finals(node_addresses, BOARD, members)
    updates_per_member = Counter(m for m, _, _ in plan)
    assert finals == {m: Final(expected[m], updates_per_member[m]) for m in members}
    assert not check_counter(answers[0] + answers[1], finals)
    _assert_reads_match(two_routers[1].port, finals)
