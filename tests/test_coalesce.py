"""Request coalescing: concurrent calls share a batch, and each still gets exactly its own answer or error."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rankshard.router._coalesce import Coalescer
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0


def test_calls_arriving_while_a_batch_runs_go_together_as_the_next_batch_with_per_item_answers() -> None:
    batches: list[list[int]] = []

    async def run(key: str, items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        return [ValueError(f"item {i}") if i == 3 else i * 10 for i in items]

    async def main() -> list[object]:
        c: Coalescer[str, int, int] = Coalescer(run, max_in_flight=1)
        answers = await asyncio.gather(*(c.submit("k", i) for i in range(6)), return_exceptions=True)
        later = await c.submit("k", 7)
        await c.aclose()
        return [*answers, later]

    answers = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4, 5], [7]]  # an idle key runs a call at once
    assert answers[:3] == [0, 10, 20] and answers[4:] == [40, 50, 70]
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "item 3"


def test_a_caller_that_gives_up_does_not_cancel_the_batch_of_the_others() -> None:
    release = asyncio.Event()

    async def run(key: str, items: list[int]) -> list[int]:
        await release.wait()
        return items

    async def main() -> int:
        c: Coalescer[str, int, int] = Coalescer(run)
        impatient = asyncio.create_task(c.submit("k", 1))
        patient = asyncio.create_task(c.submit("k", 2))
        await asyncio.sleep(0)  # both submitted; the batch is flushed on the next iteration
        await asyncio.sleep(0)
        impatient.cancel()
        release.set()
        result = await patient
        await c.aclose()
        return result

    assert asyncio.run(main()) == 2


def test_a_full_batch_starts_at_once_even_past_the_in_flight_limit() -> None:
    sizes: list[int] = []

    async def run(key: str, items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        c: Coalescer[str, int, int] = Coalescer(run, max_batch=4, max_in_flight=1)
        await asyncio.gather(*(c.submit("k", i) for i in range(10)))
        await c.aclose()

    asyncio.run(main())
    assert sizes == [1, 4, 4, 1]


def test_concurrent_updates_with_one_conflicting_request_id_fail_only_that_call(client) -> None:
    client.create("co", boundaries=[50, 100])
    lb = client.lb
    lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="co", user_id="dup", score=5, request_id="r1"), timeout=T)
    users = [f"p{i:02d}" for i in range(40)]

    def update(i: int, u: str) -> grpc.Future:
        return lb.UpdateScore.future(
            pb.UpdateScoreRequest(leaderboard="co", user_id=u, score=3 * i, request_id="r1"), timeout=T
        )

    # The refused call goes in the middle of a burst, so it is batched with calls that must still succeed.
    calls = [update(i, u) for i, u in enumerate(users[:20])]
    conflict = lb.UpdateScore.future(
        pb.UpdateScoreRequest(leaderboard="co", user_id="dup", score=6, request_id="r1"), timeout=T
    )
    replay = lb.UpdateScore.future(
        pb.UpdateScoreRequest(leaderboard="co", user_id="dup", score=5, request_id="r1"), timeout=T
    )
    calls += [update(i, u) for i, u in enumerate(users[20:], 20)]
    with pytest.raises(grpc.RpcError) as refused:
        conflict.result()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request_id" in refused.value.details() and "updates[" not in refused.value.details()
    assert replay.result().score == 5 and not replay.result().applied
    assert [c.result().score for c in calls] == [3 * i for i in range(40)]
    assert all(c.result().applied for c in calls)
    ordered = sorted([*((3 * i, u) for i, u in enumerate(users)), (5, "dup")], key=lambda p: (-p[0], p[1]))
    top = lb.GetTop(pb.GetTopRequest(leaderboard="co", limit=100), timeout=T)
    assert [(e.score, e.user_id) for e in top.entries] == ordered and top.total == 41


def test_concurrent_rank_lookups_answer_each_user_and_not_found_only_the_unknown(client) -> None:
    client.create("cr", boundaries=[10, 20])
    lb = client.lb
    scores = {f"m{i}": (i * 7) % 31 for i in range(30)}
    lb.BatchUpdateScores(
        pb.BatchUpdateScoresRequest(
            leaderboard="cr", updates=[pb.ScoreUpdate(user_id=u, score=s) for u, s in scores.items()]
        ),
        timeout=T,
    )
    asked = [*scores, "nobody"]
    futures = {u: lb.GetRank.future(pb.GetRankRequest(leaderboard="cr", user_id=u), timeout=T) for u in asked}
    with pytest.raises(grpc.RpcError) as missing:
        futures["nobody"].result()
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "nobody" in missing.value.details()
    for user, score in scores.items():
        answer = futures[user].result()
        assert answer.entry.score == score and answer.total == 30
        assert answer.entry.rank == 1 + sum(s > score for s in scores.values())
