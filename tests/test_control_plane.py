"""The control plane store (`shard_map._store`) against a real PostgreSQL.

Each test gets a fresh, empty database from the `control_plane_dsn` fixture. The store is async; the tests are
sync functions running one coroutine each with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from rankshard.shard_map import (
    AlreadyExists,
    BoardConfig,
    Buckets,
    ControlPlane,
    ControlPlaneError,
    InvalidArgument,
    Node,
    NotFound,
    Operator,
    Shard,
    ShardState,
    SlotTable,
    SortOrder,
    StaleEpoch,
)
from rankshard.shard_map._migrate import _CREATE_TABLE, load_migrations
from rankshard.shard_map._store import LISTENER_NAME

WAIT = 10.0  # seconds: the deadline of every wait on a notification


def run(coro):
    return asyncio.run(coro)


def migration_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()


async def with_nodes(plane: ControlPlane, count: int) -> list[str]:
    return [(await plane.add_node(f"127.0.0.1:{7000 + i}")).id for i in range(count)]


async def next_change(changes: AsyncIterator[tuple[str, int]]) -> tuple[str, int]:
    async with asyncio.timeout(WAIT):
        return await anext(changes)


# ---- opening and migrations ------------------------------------------------------------------------------


def test_migrations_apply_once_and_are_recorded(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            assert plane.dsn == control_plane_dsn
        first = migration_rows(control_plane_dsn)
        async with await ControlPlane.open(control_plane_dsn):
            pass
        return first, migration_rows(control_plane_dsn)

    first, second = run(main())
    shipped = load_migrations()
    assert [(v, n) for v, n, _ in first] == [(m.version, m.name) for m in shipped]
    assert shipped[0].version == 1 and shipped[0].name == "initial"
    assert all(applied_at is not None for _, _, applied_at in first)
    assert second == first  # reopening applied nothing


def test_concurrent_opens_apply_each_migration_once(control_plane_dsn):
    async def main():
        planes = await asyncio.gather(*(ControlPlane.open(control_plane_dsn) for _ in range(4)))
        for plane in planes:
            assert await plane.list_boards() == []
            await plane.close()

    run(main())
    assert [v for v, _, _ in migration_rows(control_plane_dsn)] == [m.version for m in load_migrations()]


def test_unreachable_control_plane_is_a_control_plane_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = f"host=127.0.0.1 port={port} dbname=nowhere user=nobody password=secret"
    with pytest.raises(ControlPlaneError, match=rf"control plane .*127\.0\.0\.1:{port}/nowhere") as info:
        run(ControlPlane.open(dsn, timeout=2))
    assert isinstance(info.value.__cause__, psycopg.Error)
    assert "secret" not in str(info.value)


def test_missing_database_is_a_control_plane_error_that_says_why(control_plane_dsn):
    dsn = make_conninfo(control_plane_dsn, dbname="rankshard_no_such_db")
    with pytest.raises(ControlPlaneError, match="does not exist"):
        run(ControlPlane.open(dsn, timeout=5))


def test_calls_after_close_raise_control_plane_error(control_plane_dsn):
    async def main():
        plane = await ControlPlane.open(control_plane_dsn)
        await plane.close()
        with pytest.raises(ControlPlaneError, match="control plane .* listing leaderboards failed"):
            await plane.list_boards()

    run(main())


# ---- nodes -----------------------------------------------------------------------------------------------


def test_node_registry_assigns_ids_in_numeric_order(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            added = [await plane.add_node(f"10.0.0.{i}:6379") for i in range(1, 12)]
            assert [n.id for n in added] == [f"n{i}" for i in range(1, 12)]
            assert added[0] == Node("n1", "10.0.0.1:6379", "ACTIVE")
            assert await plane.list_nodes() == added  # n10 and n11 after n9, not after n1
            assert await plane.get_node("n10") == added[9]
            with pytest.raises(AlreadyExists, match="10.0.0.3:6379"):
                await plane.add_node("10.0.0.3:6379")
            with pytest.raises(NotFound, match="node 'n99' not found"):
                await plane.get_node("n99")
            with pytest.raises(InvalidArgument) as info:
                await plane.add_node("")
            assert info.value.field == "address"
            assert (await plane.add_node("10.0.0.99:6379")).id == "n12"  # a refused duplicate used no id

    run(main())


# ---- index slots -----------------------------------------------------------------------------------------


def test_slot_table_round_trip(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            assert await plane.slot_table() is None
            nodes = await with_nodes(plane, 3)
            first = SlotTable.spread(nodes[:2])
            await plane.assign_slots(first)
            assert await plane.slot_table() == first
            second = SlotTable(("n3",) * 10 + first.owners[10:])
            await plane.assign_slots(second)
            assert await plane.slot_table() == second
            with pytest.raises(NotFound, match="node 'n7' not found"):
                await plane.assign_slots(SlotTable.spread(["n1", "n7"]))
            assert await plane.slot_table() == second

    run(main())


# ---- boards ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(SortOrder))
@pytest.mark.parametrize("operator", list(Operator))
def test_create_board_round_trips(control_plane_dsn, order, operator):
    config = BoardConfig("season:1", order, operator)

    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 2)
            created = await plane.create_board(config, [-10, 0, 500], nodes)
            return created, await plane.shard_map("season:1"), await plane.get_board("season:1")

    created, stored, board = run(main())
    assert board == config
    assert stored == created
    assert (created.board, created.epoch) == ("season:1", 1)
    assert [(s.id, s.lower, s.upper, s.node) for s in created.shards] == [
        ("s1", None, -10, "n1"),
        ("s2", -10, 0, "n1"),
        ("s3", 0, 500, "n2"),
        ("s4", 500, None, "n2"),
    ]
    assert {(s.state, s.generation) for s in created.shards} == {(ShardState.ACTIVE, 1)}


def test_a_sized_board_keeps_its_layout(control_plane_dsn):
    config = BoardConfig("big", expected_members=500_000_000, buckets=Buckets(index=7630, versions=13021))

    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await plane.create_board(config, [], await with_nodes(plane, 1))
            return await plane.get_board("big"), await plane.list_boards()

    board, listed = run(main())
    assert board == config
    assert listed == [config]


def test_boards_from_before_sizing_keep_the_layout_they_were_written_with(control_plane_dsn):
    """A board created under the first schema: its users' keys were computed with the default bucket counts,
    so after the upgrade it must still read them."""
    first = load_migrations()[0]
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
        conn.execute(first.sql)
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (first.version, first.name))
        conn.execute("INSERT INTO boards (name, sort_order, operator, epoch, next_shard) VALUES ('old', 1, 1, 1, 1)")

    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            return await plane.get_board("old")

    assert run(main()) == BoardConfig("old", expected_members=0, buckets=Buckets())
    assert [v for v, _, _ in migration_rows(control_plane_dsn)] == [m.version for m in load_migrations()]


def test_board_listing_and_all_maps(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 3)
            one = await plane.create_board(BoardConfig("b"), [], nodes)
            many = await plane.create_board(BoardConfig("a", SortOrder.ASCENDING), [1, 2, 3, 4], nodes)
            assert [b.name for b in await plane.list_boards()] == ["a", "b"]
            assert await plane.shard_maps() == {"a": many, "b": one}
            return one, many

    one, many = run(main())
    assert [(s.lower, s.upper) for s in one.shards] == [(None, None)]
    assert [s.node for s in many.shards] == ["n1", "n1", "n2", "n2", "n3"]  # runs of neighbours


def test_duplicate_board_already_exists_and_changes_nothing(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 1)
            first = await plane.create_board(BoardConfig("g"), [0], nodes)
            with pytest.raises(AlreadyExists, match="leaderboard 'g' already exists"):
                await plane.create_board(BoardConfig("g", SortOrder.ASCENDING), [5, 6], nodes)
            assert await plane.shard_map("g") == first
            assert await plane.get_board("g") == BoardConfig("g")

    run(main())


def test_unknown_board_or_node_is_not_found(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            with pytest.raises(NotFound, match="leaderboard 'x' not found"):
                await plane.get_board("x")
            with pytest.raises(NotFound, match="leaderboard 'x' not found"):
                await plane.shard_map("x")
            with pytest.raises(NotFound, match="leaderboard 'x' not found"):
                await plane.replace_shards("x", 1, [Shard("s1", None, None, "n1")])
            with pytest.raises(NotFound, match="leaderboard 'x' not found"):
                await plane.reserve_shard_ids("x")
            await with_nodes(plane, 1)
            with pytest.raises(NotFound, match="node 'n2' not found"):
                await plane.create_board(BoardConfig("x"), [0], ["n1", "n2"])
            with pytest.raises(NotFound):  # nothing of the failed board was kept
                await plane.get_board("x")
            assert await plane.shard_maps() == {}

    run(main())


def test_a_board_being_created_is_invisible_until_activated_and_resumes(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 2)
            config, begun = await plane.begin_board(BoardConfig("g", expected_members=5), [0], nodes)
            with pytest.raises(NotFound):
                await plane.get_board("g")
            assert await plane.list_boards() == [] and await plane.shard_maps() == {}
            with pytest.raises(NotFound):
                await plane.replace_shards("g", 1, [Shard("s1", None, None, "n1", generation=2)])
            # The same configuration resumes it as first recorded (placement included); another is refused.
            assert await plane.begin_board(BoardConfig("g", expected_members=5), [0], ["n2"]) == (config, begun)
            for other in [(BoardConfig("g", expected_members=5), [1]), (BoardConfig("g", SortOrder.ASCENDING), [0])]:
                with pytest.raises(AlreadyExists, match="half created with another configuration"):
                    await plane.begin_board(*other, nodes)
            await plane.activate_board("g", begun.epoch)
            assert await plane.shard_map("g") == begun and await plane.get_board("g") == config
            with pytest.raises(AlreadyExists, match="leaderboard 'g' already exists"):
                await plane.begin_board(BoardConfig("g", expected_members=5), [0], nodes)

    run(main())


def test_a_deleted_name_is_free_again_and_its_epoch_goes_on(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            await plane.create_board(BoardConfig("g"), [0], ["n1"])
            changes = plane.epoch_changes()
            try:
                assert await next_change(changes) == ("g", 1)
                await plane.begin_delete("g")
                assert await next_change(changes) == ("g", 2)  # routers holding epoch 1 reload, and find nothing
                with pytest.raises(NotFound):
                    await plane.get_board("g")
                with pytest.raises(AlreadyExists, match="being deleted"):
                    await plane.create_board(BoardConfig("g"), [], ["n1"])
                await plane.begin_delete("g")  # a delete run again
                assert await next_change(changes) == ("g", 3)
                await plane.finish_delete("g")
                for step in (plane.begin_delete, plane.finish_delete):
                    with pytest.raises(NotFound, match="'g'"):
                        await step("g")
                again = await plane.create_board(BoardConfig("g", SortOrder.ASCENDING), [5], ["n1"])
                assert again.epoch == 4 and [s.id for s in again.shards] == ["s1", "s2"]
                assert await next_change(changes) == ("g", 4)
                assert await plane.get_board("g") == BoardConfig("g", SortOrder.ASCENDING)
            finally:
                await changes.aclose()

    run(main())


@pytest.mark.parametrize(
    ("config", "boundaries", "nodes", "field"),
    [
        (BoardConfig("bad name"), [], ["n1"], "leaderboard"),
        (BoardConfig("g"), [5, 5], ["n1"], "boundaries[1]"),
        (BoardConfig("g"), [2**53], ["n1"], "boundaries[0]"),
        (BoardConfig("g"), [], [], "nodes"),
        (BoardConfig("g", sort_order=0), [], ["n1"], "sort_order"),  # type: ignore[arg-type]
        (BoardConfig("g", operator=7), [], ["n1"], "operator"),  # type: ignore[arg-type]
        (BoardConfig("g", expected_members=-1), [], ["n1"], "expected_members"),
        (BoardConfig("g", expected_members=10**11), [], ["n1"], "expected_members"),
        (BoardConfig("g", buckets=Buckets(index=0)), [], ["n1"], "buckets.index"),
        (BoardConfig("g", buckets=Buckets(versions=2**31)), [], ["n1"], "buckets.versions"),
    ],
)
def test_create_board_rejects_bad_input_naming_the_field(control_plane_dsn, config, boundaries, nodes, field):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            with pytest.raises(InvalidArgument) as info:
                await plane.create_board(config, boundaries, nodes)
            assert await plane.list_boards() == []
            return info.value.field

    assert run(main()) == field


# ---- replacing shard maps --------------------------------------------------------------------------------


def test_replace_shards_bumps_the_epoch(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 2)
            before = await plane.create_board(BoardConfig("g"), [0, 100], nodes)
            s1, s2, s3 = before.shards
            (new_id,) = await plane.reserve_shard_ids("g")
            split = [s1, dataclasses.replace(s2, upper=50, generation=2), Shard(new_id, 50, 100, "n2"), s3]
            after = await plane.replace_shards("g", 1, split)
            assert after.epoch == 2
            assert after.shards == tuple(split)
            assert await plane.shard_map("g") == after
            moved = [s1, after.shards[1], dataclasses.replace(after.shards[2], node="n1", generation=2), s3]
            assert (await plane.replace_shards("g", 2, moved)).epoch == 3
            return new_id, await plane.shard_map("g")

    new_id, final = run(main())
    assert new_id == "s4"
    assert final.epoch == 3
    assert [(s.id, s.lower, s.upper, s.node, s.generation) for s in final.shards] == [
        ("s1", None, 0, "n1", 1),
        ("s2", 0, 50, "n1", 2),
        ("s4", 50, 100, "n1", 2),
        ("s3", 100, None, "n2", 1),
    ]


@pytest.mark.parametrize(
    ("shards", "field"),
    [
        ([Shard("s1", None, 0, "n1"), Shard("s2", 1, None, "n1")], "shards"),  # gap
        ([Shard("s1", None, 5, "n1"), Shard("s2", 0, None, "n1")], "shards"),  # overlap
        ([Shard("s1", None, 0, "n1")], "shards"),  # does not reach the top
        ([], "shards"),
        ([Shard("s1", None, 2**53, "n1"), Shard("s2", 2**53, None, "n1")], "shards[0].upper"),
        ([Shard("s1", None, None, "n1", state="GONE")], "shards[0].state"),  # type: ignore[arg-type]
        ([Shard("s1", None, None, "n1", generation=0)], "shards[0].generation"),
        ([Shard("s1", None, None, "n2", generation=1)], "shards[0].generation"),  # owner moved, same gen
        ([Shard("s1", None, 0, "n1"), Shard("s2", 0, None, "n1", generation=1)], "shards[1].generation"),
        ([Shard("s1", None, 5, "n1"), Shard("s2", 5, None, "n2", generation=2)], "shards[0].generation"),
    ],
    ids=["gap", "overlap", "short", "empty", "range", "state", "gen0", "owner1", "owner2", "resized"],
)
def test_replace_shards_rejects_a_bad_list_and_keeps_the_map(control_plane_dsn, shards, field):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            nodes = await with_nodes(plane, 2)
            # One shard s1 on n1 for the one-shard cases, else s1 = [.., 0) on n1 and s2 = [0, ..) on n2.
            before = await plane.create_board(BoardConfig("g"), [] if len(shards) == 1 else [0], nodes)
            with pytest.raises(InvalidArgument) as info:
                await plane.replace_shards("g", 1, shards)
            assert await plane.shard_map("g") == before
            return info.value.field

    assert run(main()) == field


def test_replace_shards_refuses_a_lower_generation_and_an_unknown_node(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            before = await plane.create_board(BoardConfig("g"), [], ["n1"])
            bumped = await plane.replace_shards("g", 1, [Shard("s1", None, None, "n1", generation=5)])
            with pytest.raises(InvalidArgument, match="below the stored 5"):
                await plane.replace_shards("g", 2, [Shard("s1", None, None, "n1", generation=4)])
            with pytest.raises(NotFound, match="node 'n9' not found"):
                await plane.replace_shards("g", 2, [Shard("s1", None, None, "n9", generation=6)])
            assert await plane.shard_map("g") == bumped != before

    run(main())


def test_replace_shards_with_a_stale_epoch_fails_and_only_one_racer_wins(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 2)
            await plane.create_board(BoardConfig("g"), [], ["n1"])
            racers = [
                plane.replace_shards("g", 1, [Shard("s1", None, None, node, generation=2)]) for node in ("n1", "n2")
            ]
            results = await asyncio.gather(*racers, return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(winners) == 1 and winners[0].epoch == 2
            assert len(losers) == 1 and isinstance(losers[0], StaleEpoch)
            assert await plane.shard_map("g") == winners[0]
            with pytest.raises(StaleEpoch) as info:
                await plane.replace_shards("g", 1, [Shard("s1", None, None, "n1", generation=3)])
            return info.value

    stale = run(main())
    assert isinstance(stale, ControlPlaneError)
    assert (stale.board, stale.expected, stale.actual) == ("g", 1, 2)
    assert "epoch 2, not 1" in str(stale)


def test_reserved_shard_ids_are_never_reused(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            await plane.create_board(BoardConfig("g"), [0, 1], ["n1"])
            assert await plane.reserve_shard_ids("g", 2) == ["s4", "s5"]
            assert await plane.reserve_shard_ids("g") == ["s6"]
            await plane.replace_shards("g", 1, [Shard("s9", None, None, "n1")])
            assert await plane.reserve_shard_ids("g") == ["s10"]
            with pytest.raises(InvalidArgument):
                await plane.reserve_shard_ids("g", 0)

    run(main())


# ---- epoch notifications ---------------------------------------------------------------------------------


def test_epoch_changes_reports_current_epochs_then_each_change(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            await plane.create_board(BoardConfig("season:1"), [0], ["n1"])
            changes = plane.epoch_changes()
            try:
                # The current epochs come first, once the listener is listening: nothing after is missed.
                assert await next_change(changes) == ("season:1", 1)
                await plane.create_board(BoardConfig("b"), [], ["n1"])
                assert await next_change(changes) == ("b", 1)
                await plane.replace_shards("season:1", 1, [Shard("s1", None, None, "n1", generation=2)])
                assert await next_change(changes) == ("season:1", 2)
                await plane.reserve_shard_ids("b")  # no change to any map: no announcement
                await plane.replace_shards("b", 1, [Shard("s2", None, None, "n1")])
                assert await next_change(changes) == ("b", 2)
            finally:
                await changes.aclose()
            await wait_listeners_gone(control_plane_dsn)  # closing the iterator closed its connection

    run(main())


def test_epoch_changes_reconnects_after_losing_its_connection(control_plane_dsn):
    async def main():
        async with await ControlPlane.open(control_plane_dsn) as plane:
            await with_nodes(plane, 1)
            await plane.create_board(BoardConfig("g"), [], ["n1"])
            changes = plane.epoch_changes()
            try:
                assert await next_change(changes) == ("g", 1)
                assert await _terminate_listeners(control_plane_dsn) == 1
                await plane.replace_shards("g", 1, [Shard("s1", None, None, "n1", generation=2)])
                # Announced while reconnecting or not: the epochs re-read on reconnect carry it.
                async with asyncio.timeout(WAIT):
                    while await anext(changes) != ("g", 2):
                        pass
                await plane.replace_shards("g", 2, [Shard("s1", None, None, "n1", generation=3)])
                assert await next_change(changes) == ("g", 3)
            finally:
                await changes.aclose()

    run(main())


async def wait_listeners_gone(dsn: str) -> None:
    """Waits until no listener connection is left (a backend ends a moment after its client hangs up)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with asyncio.timeout(WAIT):
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = %s",
                    (LISTENER_NAME,),
                )
                if (await cur.fetchone())[0] == 0:
                    return
                await asyncio.sleep(0.02)


async def _terminate_listeners(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (LISTENER_NAME,),
        )
        return (await cur.fetchone())[0]
