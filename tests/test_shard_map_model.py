"""Pure unit tests of the shard-map model (`shard_map._model`) and the input checks (`shard_map._limits`)."""

from __future__ import annotations

import itertools
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankshard.shard_map import (
    DEFAULT_LIMIT,
    DEFAULT_RADIUS,
    MAX_BATCH,
    MAX_LIMIT,
    MAX_RADIUS,
    MAX_SCORE,
    NUM_SLOTS,
    BoardConfig,
    Buckets,
    InvalidArgument,
    Operator,
    Shard,
    ShardMap,
    SlotTable,
    SortOrder,
    check_board_name,
    check_boundaries,
    check_count,
    check_offset,
    check_request_id,
    check_score,
    check_user_id,
    default_boundaries,
    ranges_for,
    slot_for,
    tiling_problems,
    user_hash,
)


def make_map(cuts: list[int] | tuple[int, ...], board: str = "b") -> ShardMap:
    shards = tuple(
        Shard(f"s{i}", lower, upper, f"n{i % 2 + 1}") for i, (lower, upper) in enumerate(ranges_for(cuts), start=1)
    )
    return ShardMap(board, 1, shards)


# ---- ranges and shard_for --------------------------------------------------------------------------------


def test_ranges_for_makes_one_more_range_than_cuts_with_open_ends():
    assert ranges_for([]) == [(None, None)]
    assert ranges_for([0, 10]) == [(None, 0), (0, 10), (10, None)]


@pytest.mark.parametrize(
    ("score", "shard"),
    [
        (-MAX_SCORE, "s1"),
        (-1, "s1"),  # just below the first cut
        (0, "s2"),  # a cut belongs to the range above it: [lower, upper)
        (99, "s2"),
        (100, "s3"),
        (MAX_SCORE, "s3"),
    ],
)
def test_shard_for_at_both_sides_of_each_boundary(score, shard):
    shard_map = make_map([0, 100])
    assert shard_map.shard_for(score).id == shard
    assert shard_map.shard_for(score).holds(score)
    assert shard_map.boundaries == (0, 100)


def test_single_shard_map_holds_every_score():
    shard_map = make_map([])
    assert [shard_map.shard_for(s).id for s in (-MAX_SCORE, 0, MAX_SCORE)] == ["s1"] * 3
    assert shard_map.boundaries == ()


@settings(database=None, max_examples=200)
@given(
    cuts=st.lists(st.integers(-MAX_SCORE, MAX_SCORE), max_size=20, unique=True).map(sorted),
    scores=st.lists(st.integers(-MAX_SCORE, MAX_SCORE), min_size=1, max_size=20),
)
def test_every_score_lands_in_exactly_the_one_shard_that_holds_it(cuts, scores):
    shard_map = make_map(cuts)
    assert len(shard_map.shards) == len(cuts) + 1
    for score in scores + cuts:
        holders = [s for s in shard_map.shards if s.holds(score)]
        assert holders == [shard_map.shard_for(score)]
        assert shard_map.shards[shard_map.index_for(score)] is holders[0]


def test_by_id_finds_a_shard_and_raises_key_error_for_unknown_ids():
    shard_map = make_map([5])
    assert shard_map.by_id("s2").lower == 5
    with pytest.raises(KeyError):
        shard_map.by_id("s9")


def test_best_first_reverses_for_descending_and_keeps_ascending():
    shard_map = make_map([0, 100])
    assert [s.id for s in shard_map.best_first(SortOrder.DESCENDING)] == ["s3", "s2", "s1"]
    assert [s.id for s in shard_map.best_first(SortOrder.ASCENDING)] == ["s1", "s2", "s3"]


def test_board_config_defaults_to_descending_increment():
    config = BoardConfig("b")
    assert (config.sort_order, config.operator, config.descending) == (
        SortOrder.DESCENDING,
        Operator.INCREMENT,
        True,
    )
    assert not BoardConfig("b", SortOrder.ASCENDING).descending


# ---- tiling ----------------------------------------------------------------------------------------------


def test_a_proper_tiling_has_no_problems():
    assert tiling_problems(make_map([1, 2, 3]).shards) == []


@pytest.mark.parametrize(
    ("shards", "problem"),
    [
        ([], "no shards"),
        ([Shard("s1", 0, None, "n1")], "gap below 0"),
        ([Shard("s1", None, 0, "n1")], "gap from 0 up"),
        ([Shard("s1", None, 0, "n1"), Shard("s2", 5, None, "n1")], "do not meet"),  # gap
        ([Shard("s1", None, 5, "n1"), Shard("s2", 0, None, "n1")], "do not meet"),  # overlap
        (
            [Shard("s1", None, 5, "n1"), Shard("s2", 5, 5, "n1"), Shard("s3", 5, None, "n1")],
            "s2 is empty",
        ),
        (
            [Shard("s1", None, 5, "n1"), Shard("s2", 5, 3, "n1"), Shard("s3", 3, None, "n1")],
            "s2 is empty",
        ),
        ([Shard("s1", None, 5, "n1"), Shard("s1", 5, None, "n2")], "duplicate shard ids"),
    ],
    ids=["none", "open-below", "open-above", "gap", "overlap", "empty", "inverted", "duplicate"],
)
def test_tiling_problems_names_each_fault(shards, problem):
    problems = tiling_problems(shards)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ValueError, match="does not tile"):
        ShardMap("b", 1, tuple(shards))


# ---- boundaries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 4, 16, 100, 256])
def test_default_boundaries_are_strictly_ascending_and_skewed(shards):
    cuts = default_boundaries(shards)
    assert len(cuts) == shards - 1
    assert list(cuts) == sorted(set(cuts))
    assert check_boundaries(cuts) == cuts
    widths = [b - a for a, b in itertools.pairwise((0, *cuts))]
    # Exponential quantiles: each range is at least as wide as the one below it (up to rounding to
    # integers), and the top one much wider than the bottom one.
    assert all(upper >= lower - 1 for lower, upper in itertools.pairwise(widths))
    if shards >= 4:
        assert widths[-1] > 2 * widths[0]


def test_default_boundaries_scale_with_the_typical_score():
    assert default_boundaries(2, typical_score=1000) == (693,)  # the median of an exponential: ln 2 * mean
    assert default_boundaries(2, typical_score=10) == (7,)


def test_default_boundaries_reject_fewer_than_one_shard():
    with pytest.raises(InvalidArgument) as info:
        default_boundaries(0)
    assert info.value.field == "shards"


def test_check_boundaries_accepts_the_score_edges():
    assert check_boundaries([-MAX_SCORE, 0, MAX_SCORE]) == (-MAX_SCORE, 0, MAX_SCORE)
    assert check_boundaries([]) == ()
    assert len(check_boundaries(range(255))) == 255


@pytest.mark.parametrize(
    ("cuts", "field"),
    [
        ([0, 5, 5], "boundaries[2]"),
        ([0, 5, 4], "boundaries[2]"),
        ([MAX_SCORE + 1], "boundaries[0]"),
        ([0, -MAX_SCORE - 1], "boundaries[1]"),
        (range(256), "boundaries"),
    ],
)
def test_check_boundaries_errors_name_the_index(cuts, field):
    with pytest.raises(InvalidArgument) as info:
        check_boundaries(cuts)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_check_boundaries_uses_the_callers_field_name():
    with pytest.raises(InvalidArgument) as info:
        check_boundaries([2, 1], field="config.boundaries")
    assert info.value.field == "config.boundaries[1]"


# ---- index slots -----------------------------------------------------------------------------------------


def test_slot_for_is_the_low_bits_of_a_stable_crc32():
    assert user_hash("alice") == zlib.crc32(b"alice") == 663_665_735
    assert slot_for("alice") == 663_665_735 % NUM_SLOTS == 71
    assert slot_for("alice") == slot_for("alice")


@settings(database=None)
@given(st.text(max_size=64))
def test_slot_for_is_in_range_for_any_text(user_id):
    assert 0 <= slot_for(user_id) < NUM_SLOTS
    assert slot_for(user_id) == slot_for(str(user_id))


def test_slot_for_accepts_lone_surrogates():
    assert 0 <= slot_for("\ud800") < NUM_SLOTS


def test_slot_table_spreads_round_robin_and_checks_its_size():
    table = SlotTable.spread(["n1", "n2", "n3"])
    assert [table.node_for(s) for s in range(5)] == ["n1", "n2", "n3", "n1", "n2"]
    assert table.owners.count("n1") == 342
    with pytest.raises(ValueError, match="1023 slots"):
        SlotTable(("n1",) * (NUM_SLOTS - 1))
    with pytest.raises(ValueError, match="no nodes"):
        SlotTable.spread([])


# ---- limits ----------------------------------------------------------------------------------------------


def raises_on(field: str):
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(InvalidArgument)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert self.info.value.field == field
            assert field in str(self.info.value)
            return handled

    return Check()


@pytest.mark.parametrize("name", ["a", "A" * 64, "Z9_.:-x", "0", "season:2024-01.eu_west"])
def test_board_name_accepts_up_to_64_allowed_characters(name):
    assert check_board_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 65, "_a", "-a", ".a", "a b", "a/b", "é", "a\n"])
def test_board_name_rejects_the_rest_naming_the_field(name):
    with raises_on("leaderboard"):
        check_board_name(name)
    with raises_on("config.name"):
        check_board_name(name, "config.name")


@pytest.mark.parametrize("user_id", ["u", "x" * 128, "é" * 64, "€" * 42 + "xx", "玩家 1"])
def test_user_id_accepts_up_to_128_bytes_of_utf8(user_id):
    assert check_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", ["", "x" * 129, "é" * 64 + "x", "€" * 43, "a\x00", "a\x1f", "\x7f", "\x85"])
def test_user_id_rejects_empty_long_and_control_characters(user_id):
    with raises_on("updates[3].user_id"):
        check_user_id(user_id, "updates[3].user_id")


@pytest.mark.parametrize("score", [-MAX_SCORE, -1, 0, 1, MAX_SCORE])
def test_score_accepts_the_exact_double_range(score):
    assert check_score(score) == score


@pytest.mark.parametrize("score", [-MAX_SCORE - 1, MAX_SCORE + 1, 2**63])
def test_score_rejects_one_past_either_edge(score):
    with raises_on("score"):
        check_score(score)


def test_request_id_accepts_empty_and_128_bytes_and_rejects_129():
    assert check_request_id("") == ""
    assert check_request_id("r" * 128) == "r" * 128
    with raises_on("request_id"):
        check_request_id("r" * 129)
    with raises_on("request_id"):
        check_request_id("é" * 65)  # 130 bytes in 65 characters


@pytest.mark.parametrize(
    ("field", "maximum", "default"),
    [("limit", MAX_LIMIT, DEFAULT_LIMIT), ("radius", MAX_RADIUS, DEFAULT_RADIUS), ("updates", MAX_BATCH, None)],
)
def test_counts_accept_zero_to_maximum_and_reject_one_past(field, maximum, default):
    assert check_count(0, field, maximum, default) == (0 if default is None else default)
    assert check_count(1, field, maximum, default) == 1
    assert check_count(maximum, field, maximum, default) == maximum
    for bad in (maximum + 1, -1):
        with raises_on(field):
            check_count(bad, field, maximum, default)


def test_limits_have_the_documented_values():
    assert (MAX_SCORE, MAX_LIMIT, DEFAULT_LIMIT, MAX_RADIUS, DEFAULT_RADIUS, MAX_BATCH) == (
        2**53 - 1,
        1000,
        10,
        100,
        4,
        1000,
    )


def test_offset_accepts_zero_and_rejects_negative():
    assert check_offset(0) == 0
    assert check_offset(10**12) == 10**12
    with raises_on("offset"):
        check_offset(-1)


@given(members=st.integers(1, 10**10), nodes=st.integers(1, 1000))
def test_a_sized_board_has_at_most_64_entries_per_hash_and_no_more_hashes_than_that_needs(members, nodes):
    """The index spreads over NUM_SLOTS * index hashes, each node's version registers over `versions`."""
    b = Buckets.sized_for(members, nodes)
    per_index, per_versions = members / (NUM_SLOTS * b.index), members / (nodes * b.versions)
    assert per_index <= 64 and per_versions <= 64
    # One hash fewer would hold more than 64.
    assert b.index == 1 or members / (NUM_SLOTS * (b.index - 1)) > 64
    assert b.versions == 1 or members / (nodes * (b.versions - 1)) > 64


def test_a_board_not_sized_keeps_the_default_layout():
    assert Buckets.sized_for(0, 3) == Buckets() == BoardConfig("b").buckets
