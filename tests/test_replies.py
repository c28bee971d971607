"""Script replies decoded at the boundary (`shard_node._replies`): what each shape becomes, and a clear
`UnexpectedReply` naming the node and the script for a reply of another shape (a node that is not running
rankshard's scripts), never an IndexError or TypeError from deep inside the write path.

Pure: the replies are what Valkey hands back for the shapes in each ``scripts/*.lua`` header; every script's
real replies are decoded by the integration tests (test_rpc, test_moves, test_tombstones, ...)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rankshard.shard_map import NodeError, StaleMap, UnexpectedReply
from rankshard.shard_node import IndexEntry
from rankshard.shard_node import _replies as replies
from rankshard.shard_node._replies import (
    Aborted,
    Answered,
    Checked,
    Committed,
    Imported,
    PendingMove,
    Refusal,
    RefusalKind,
    Refused,
    RemovalRecorded,
    ShardChange,
    ShardCounts,
    ShardPage,
    SizeChanges,
    Stale,
    UpdateKind,
)
from rankshard.shard_node._scripts import SHARD_APPLY, SHARD_REMOVE, IndexMode


def test_index_apply_answers_decode_into_their_kinds() -> None:
    raw = [
        "ok",
        ["new", 5, 1, 1, "s1", "", "", 5],
        ["upd", 30, 4, 1, "s1", "s1", "s2", 30],  # a boundary crossing planned: the entry has the move
        ["upd", 7, 2, 0, "s1", "", "", 9],  # best operator, not better: kept
        ["dup", 12, 0, 0, "", "", "", 0],  # a retry for a member removed since: no entry
        ["intent", "e", 3, 6, "s2", "s2", "s1"],
        ["refused", "overflow"],
        *("upd", 8, 3),  # the usual answers, three values in the reply: no crossing, the entry is the score's
        *("new", 1, 1),
        *("kept", 9, 2),  # best operator, not better
    ]
    reply = replies.index_apply("n1", raw, IndexMode.EACH, ["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    assert reply == Answered(
        (
            Committed(UpdateKind.NEW, 5, True, IndexEntry("a", 5, 1, "s1")),
            Committed(UpdateKind.UPDATED, 30, True, IndexEntry("b", 30, 4, "s1", "s1", "s2")),
            Committed(UpdateKind.UPDATED, 7, False, IndexEntry("c", 9, 2, "s1")),
            Committed(UpdateKind.DUPLICATE, 12, False, None),
            PendingMove(IndexEntry("e", 3, 6, "s2", "s2", "s1")),
            Refused(RefusalKind.OVERFLOW),
            Committed(UpdateKind.UPDATED, 8, True, IndexEntry("g", 8, 3)),
            Committed(UpdateKind.NEW, 1, True, IndexEntry("h", 1, 1)),
            Committed(UpdateKind.UPDATED, 9, False, IndexEntry("i", 9, 2)),
        )
    )
    # The tags are the strings the scripts send.
    assert [a.kind for a in reply.answers[:4]] == ["new", "upd", "upd", "dup"]


def test_index_apply_aborts_and_checks() -> None:
    aborted = replies.index_apply("n1", ["abort", [2, "conflict"]], IndexMode.APPLY, ["a", "b"])
    assert aborted == Aborted((Refusal(2, RefusalKind.CONFLICT),))
    checked = replies.index_apply("n1", ["ok", ["intent", "b", 3, 6, "s2", "s2", "s1"]], IndexMode.CHECK, ["a", "b"])
    assert checked == Checked((PendingMove(IndexEntry("b", 3, 6, "s2", "s2", "s1")),))
    assert replies.index_apply("n1", ["ok"], IndexMode.CHECK, ["a", "b"]) == Checked(())


def test_the_other_scripts_replies_decode() -> None:
    assert replies.shard_change("n1", SHARD_APPLY, ["ok", 12]) == ShardChange(12)
    assert replies.shard_change("n1", SHARD_REMOVE, ["ok", 11, 1]) == ShardChange(11, 1)
    assert replies.shard_change("n1", SHARD_REMOVE, ["stale", ""]) == Stale("")
    written = replies.shard_write("n1", [["ok", 12], ["stale", "|5|2|ACTIVE"], ["ok", 0]], shards=3)
    assert written == [ShardChange(12), Stale("|5|2|ACTIVE"), ShardChange(0)]
    dropped = replies.shard_drop("n1", [["ok", 12, 2], ["stale", ""], ["ok", 0, 0]], shards=3)
    assert dropped == [ShardChange(12, 2), Stale(""), ShardChange(0, 0)]
    counted = replies.shard_count("n1", ["ok", "1:5.6", "7", 3, 4, 1, -1], shards=2, queries=2)
    assert counted == ShardCounts((3, 4), (1, -1), "1:5.6", 7)
    tally = replies.shard_tally("n1", ["ok", "9", 1, "s3", 5, 1], queries=1)
    assert tally == SizeChanges(9, (("s3", 5),), (1,))
    assert replies.shard_tally("n1", ["ok", "9", 0], queries=0) == SizeChanges(9, (), ())
    assert replies.shard_tally("n1", ["recheck"], queries=1) is None
    assert replies.shard_clear("n1", 3) == 3
    assert replies.shard_count("n1", ["stale", 2, "|5|1|FROZEN"], shards=2, queries=0) == Stale("|5|1|FROZEN", 2)
    assert replies.shard_page("n1", ["ok", 4, "a", "-20", "b", "-15"]) == ShardPage(4, (("a", -20), ("b", -15)))
    assert replies.index_remove("n1", ["absent"], "u") is None
    assert replies.index_remove("n1", ["ok", 5, 3, "@5"], "u") == RemovalRecorded(IndexEntry("u", 5, 3, "@", "@5"))
    with pytest.raises(StaleMap, match="floor there is 9"):
        replies.index_remove("n1", ["stale", 9], "u")
    assert replies.index_remove("n1", ["intent", 5, 3, "s1", "s1", "s2"], "u") == PendingMove(
        IndexEntry("u", 5, 3, "s1", "s1", "s2")
    )
    assert replies.index_import("n1", [1, 0], members=2) == [Imported(1), None]
    with pytest.raises(StaleMap, match="floor there is 4"):
        replies.index_import("n1", ["stale", 4], members=2)
    assert replies.index_stale_moves("n1", ["a", "b"]) == ["a", "b"]
    assert replies.collect_tombstones("n1", [2, 0, 500, 1]) == replies.CollectionStep(2, 0, 500, True)


_BAD: list[tuple[str, Callable[[], object]]] = [
    ("index_apply", lambda: replies.index_apply("n1", None, IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["done"], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok"], IndexMode.APPLY, ["a"])),  # no answer for "a"
    (
        "index_apply",
        lambda: replies.index_apply("n1", ["ok", ["upd", "5", 1, 1, "s1", "", "", 5]], IndexMode.APPLY, ["a"]),
    ),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["upd", 5, 1, 1, "s1", "", ""]], IndexMode.APPLY, ["a"])),
    (
        "index_apply",
        lambda: replies.index_apply("n1", ["ok", ["kept", 5, 1, 1, "s1", "", "", 5]], IndexMode.APPLY, ["a"]),
    ),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["refused", "overflow"]], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["dup", 5, 1, 0]], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["upd", 5, 1, 1]], IndexMode.APPLY, ["a"])),  # a list
    ("index_apply", lambda: replies.index_apply("n1", ["ok", "dup", 5, 1], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", "upd", 5, "1"], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", "upd", 5], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", "upd", 5, 1, "upd"], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["new", 5, "1", 1]], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["refused", "late"]], IndexMode.EACH, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", ["intent", "a", 3]], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["ok", 7], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["abort"], IndexMode.APPLY, ["a"])),
    ("index_apply", lambda: replies.index_apply("n1", ["abort", [2, "conflict"]], IndexMode.APPLY, ["a"])),
    (
        "index_apply",
        lambda: replies.index_apply("n1", ["ok", ["upd", 5, 1, 1, "s1", "", "", 5]], IndexMode.CHECK, ["a"]),
    ),
    ("shard_apply", lambda: replies.shard_change("n1", SHARD_APPLY, ["ok", 3, 1])),
    ("shard_apply", lambda: replies.shard_change("n1", SHARD_APPLY, ["ok", "3"])),
    ("shard_write", lambda: replies.shard_write("n1", [["ok", 3]], shards=2)),
    ("shard_write", lambda: replies.shard_write("n1", ["ok", 3], shards=1)),
    ("shard_write", lambda: replies.shard_write("n1", [["ok", 3, 1]], shards=1)),
    ("shard_write", lambda: replies.shard_write("n1", [["ok", 3], ["stale"]], shards=2)),
    ("shard_remove", lambda: replies.shard_change("n1", SHARD_REMOVE, ["ok", 3])),
    ("shard_drop", lambda: replies.shard_drop("n1", [["ok", 3]], shards=1)),
    ("shard_drop", lambda: replies.shard_drop("n1", [["ok", 3, -1]], shards=1)),
    ("shard_drop", lambda: replies.shard_drop("n1", [["ok", 3, 1]], shards=2)),
    ("shard_remove", lambda: replies.shard_change("n1", SHARD_REMOVE, ["stale"])),
    ("shard_count", lambda: replies.shard_count("n1", ["ok", 3], shards=2, queries=0)),
    ("shard_count", lambda: replies.shard_count("n1", ["ok", "1:2.3", 3, 4], shards=2, queries=0)),
    ("shard_count", lambda: replies.shard_count("n1", ["ok", "", "0", 3, 4], shards=2, queries=0)),
    ("shard_count", lambda: replies.shard_count("n1", ["ok", "1:2.3", "x", 3, 4], shards=2, queries=0)),
    ("shard_tally", lambda: replies.shard_tally("n1", ["ok", "3", 1, "s1"], queries=0)),
    ("shard_tally", lambda: replies.shard_tally("n1", ["ok", 3, 0], queries=0)),
    ("shard_tally", lambda: replies.shard_tally("n1", ["ok", "3", 0, "1"], queries=1)),
    ("shard_tally", lambda: replies.shard_tally("n1", ["recheck", 1], queries=0)),
    ("shard_clear", lambda: replies.shard_clear("n1", "1")),
    ("shard_count", lambda: replies.shard_count("n1", ["stale", 3, ""], shards=2, queries=0)),
    ("shard_page", lambda: replies.shard_page("n1", ["ok", 0, "a"])),
    ("shard_page", lambda: replies.shard_page("n1", ["ok", 0, "a", "high"])),
    ("index_remove", lambda: replies.index_remove("n1", ["gone"], "u")),
    ("index_move", lambda: replies.index_move("n1", ["ok"])),
    ("index_forget", lambda: replies.index_forget("n1", -1)),
    ("index_stale_moves", lambda: replies.index_stale_moves("n1", ["a", 2])),
    ("index_rebuild", lambda: replies.index_rebuild("n1", "a")),
    ("index_import", lambda: replies.index_import("n1", ["s1", 1], members=2)),
    ("collect_tombstones", lambda: replies.collect_tombstones("n1", [1, 2, 3])),
]


@pytest.mark.parametrize(("script", "decode"), _BAD)
def test_a_reply_of_another_shape_is_a_node_error_naming_node_and_script(
    script: str, decode: Callable[[], object]
) -> None:
    with pytest.raises(UnexpectedReply) as caught:
        decode()
    assert isinstance(caught.value, NodeError)  # served as UNAVAILABLE; the sweeper logs it and goes on
    assert (caught.value.node, caught.value.script) == ("n1", script)
    assert str(caught.value).startswith(f"node n1: unexpected reply to {script}: ")


def test_the_error_shows_a_long_reply_cut_short() -> None:
    raw = ["ok", *(["upd", 1, 1, 1, "s1", "", "", 1] for _ in range(99)), ["upd", 1]]
    with pytest.raises(UnexpectedReply, match=r"answer 100 of 100") as caught:
        replies.index_apply("n1", raw, IndexMode.APPLY, [f"u{i}" for i in range(100)])
    assert "['upd', 1]" in str(caught.value) and len(str(caught.value)) < 400
