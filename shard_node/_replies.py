"""Every reply a node gives rankshard, decoded once, here, into typed values.

Scripts answer with positional lists (each ``scripts/*.lua`` file's header gives its shape); a decoder per
script, named after it, checks the shape and returns values with named fields, so nothing above this module
indexes a reply. A reply that is not of its script's shape (a node that is not running rankshard's scripts,
or a script and its decoder that disagree) raises `UnexpectedReply`, naming the node, the script and what
was wrong. Plain commands' replies are shaped by `command_reply`, as redis-py shaped them.

index_apply's answer per update is on the write path's hot loop (~10^5 a second): `Committed` is a
NamedTuple (built in about half the time of a frozen dataclass), and its checks are type tests, not
conversions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any, NamedTuple, NoReturn

from rankshard.shard_map import StaleMap, UnexpectedReply

from . import _scripts as scripts
from ._keys import IndexEntry
from ._scripts import IndexMode, Script


class Tag(StrEnum):
    """The first field of a script's reply, or of one update's answer in index_apply's."""

    OK = "ok"
    STALE = "stale"  # a fenced shard script refused: the node holds another descriptor for the shard
    ABORT = "abort"  # index_apply refused a batch: nothing was written
    INTENT = "intent"  # the member has a pending move (another writer's) to finish first
    REFUSED = "refused"  # index_apply refused one update of coalesced unary calls (IndexMode.EACH)
    ABSENT = "absent"  # index_remove: the member is not on the board


# The tags as plain strings, for the decoders' comparisons: comparing a str with an enum member, attribute
# lookup included, takes about 6x as long (~120 ns), and a fenced shard script runs ~30 times per batch.
_OK, _STALE, _ABORT, _INTENT, _REFUSED, _ABSENT = (
    Tag.OK.value,
    Tag.STALE.value,
    Tag.ABORT.value,
    Tag.INTENT.value,
    Tag.REFUSED.value,
    Tag.ABSENT.value,
)


class UpdateKind(StrEnum):
    """How index_apply took an update."""

    NEW = "new"  # the member came to the board
    UPDATED = "upd"  # its entry was updated (or under the best operator kept: `Committed.applied` False)
    DUPLICATE = "dup"  # a retry of a request id already applied: the first call's score, nothing written


class RefusalKind(StrEnum):
    """Why index_apply refused an update."""

    CONFLICT = "conflict"  # its request id was used before with another value
    OVERFLOW = "overflow"  # the result would leave ±(2^53 - 1)


# ---- fenced shard scripts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stale:
    """A fenced shard script's refusal: the node holds `descriptor` ('' for none) for the shard at
    `position` (1-based) among the call's shards, not the one the call expected."""

    descriptor: str
    position: int = 1


@dataclass(frozen=True, slots=True)
class ShardChange:
    """shard_apply's or shard_remove's answer: the shard's size after the call, and how many members
    shard_remove removed (0 from shard_apply)."""

    size: int
    removed: int = 0


@dataclass(frozen=True, slots=True)
class ShardCounts:
    """shard_count's (or shard_tally's) answer: the size of each of the call's shards, then each query's answer, in
    order; from shard_count, also the token the node's kept sizes are good under (see `_reads.count_after`)."""

    sizes: tuple[int, ...]
    answers: tuple[int, ...]
    token: str | None = None
    version: int = 0


@dataclass(frozen=True, slots=True)
class ShardPage:
    """shard_page's answer: the members at the positions asked, best first, as (user, stored score), and how
    many members are strictly better than the first of them."""

    better: int
    rows: tuple[tuple[str, int], ...]


def shard_change(node: str, script: Script, raw: object) -> ShardChange | Stale:
    """The reply of `script` (SHARD_APPLY or SHARD_REMOVE): ``{'stale', actual}``, ``{'ok', size}``
    (shard_apply) or ``{'ok', size, removed}`` (shard_remove)."""
    if type(raw) is list and raw:  # checked inline: on the write path, once per shard and batch
        tag, size = raw[0], raw[1] if len(raw) > 1 else None
        if tag == _OK and type(size) is int and size >= 0:
            if len(raw) == 2 and script is scripts.SHARD_APPLY:
                return ShardChange(size)
            if len(raw) == 3 and script is scripts.SHARD_REMOVE and type(raw[2]) is int and raw[2] >= 0:
                return ShardChange(size, raw[2])
        elif tag == _STALE and len(raw) == 2 and type(size) is str:
            return Stale(size)
    _wrong(node, script, raw)


def shard_write(node: str, raw: object, shards: int) -> list[ShardChange | Stale]:
    """shard_write's reply for a call over `shards` shards: per shard, in the order sent, shard_apply's answer
    (``{'stale', actual}`` or ``{'ok', size}``)."""
    return _per_shard(node, scripts.SHARD_WRITE, raw, shards, 2)


def shard_drop(node: str, raw: object, shards: int) -> list[ShardChange | Stale]:
    """shard_drop's reply for a call over `shards` shards: per shard, in the order sent, shard_remove's answer
    (``{'stale', actual}`` or ``{'ok', size, removed}``)."""
    return _per_shard(node, scripts.SHARD_DROP, raw, shards, 3)


def shard_cross(
    node: str, raw: object, writes: int, drops: int
) -> tuple[list[ShardChange | Stale], list[ShardChange | Stale] | None]:
    """shard_cross's reply for a call writing `writes` shards and dropping from `drops`: shard_write's answer and
    shard_drop's, the second None when a write's fence refused and nothing was dropped."""
    if type(raw) is list and len(raw) == 2:
        written = _per_shard(node, scripts.SHARD_CROSS, raw[0], writes, 2)
        if raw[1] == [] and drops and any(type(c) is Stale for c in written):
            return written, None
        return written, _per_shard(node, scripts.SHARD_CROSS, raw[1], drops, 3)
    _wrong(node, scripts.SHARD_CROSS, raw, "as two lists")


def _per_shard(node: str, script: Script, raw: object, shards: int, ok_length: int) -> list[ShardChange | Stale]:
    """A reply of one answer per shard, each ``{'stale', actual}`` or ``{'ok', size}`` with, for `ok_length` 3, how
    many members were removed."""
    if type(raw) is list and len(raw) == shards:
        changes: list[ShardChange | Stale] = []
        for item in raw:  # checked inline, as shard_change: on the write path, once per shard and batch
            if type(item) is list and item:
                tag, size = item[0], item[1] if len(item) > 1 else None
                if tag == _OK and type(size) is int and size >= 0 and len(item) == ok_length:
                    removed = item[2] if ok_length == 3 else 0
                    if type(removed) is int and removed >= 0:
                        changes.append(ShardChange(size, removed))
                        continue
                elif tag == _STALE and len(item) == 2 and type(size) is str:
                    changes.append(Stale(size))
                    continue
            _wrong(node, script, raw, f"answer {len(changes) + 1} of {shards}")
        return changes
    _wrong(node, script, raw, f"for {shards} shards")


def shard_count(node: str, raw: object, shards: int, queries: int) -> ShardCounts | Stale:
    """shard_count's reply for a call over `shards` shards with `queries` queries: ``{'stale', position,
    actual}`` or ``{'ok', token, change number, size..., answer...}`` (`ShardCounts.token`, `.version`: what
    shard_tally is sent). A position query answers -1 for a member not there."""
    reply = _reply(node, scripts.SHARD_COUNT, raw)
    if reply[0] == _STALE and len(reply) == 3:
        position, actual = reply[1], reply[2]
        if type(position) is int and 1 <= position <= shards and type(actual) is str:
            return Stale(actual, position)
    elif reply[0] == _OK and len(reply) == 3 + shards + queries and type(reply[1]) is str and reply[1]:
        version = _number(reply[2])
        for n in islice(reply, 3, None):
            if type(n) is not int:
                break
        else:
            if version is not None:
                return ShardCounts(tuple(reply[3 : 3 + shards]), tuple(reply[3 + shards :]), reply[1], version)
    _wrong(node, scripts.SHARD_COUNT, raw, f"for {shards} shards and {queries} queries")


def shard_clear(node: str, raw: object) -> int:
    """shard_clear's reply: how many members it removed, or 1 / 0 (see the script's header)."""
    return _count(node, scripts.SHARD_CLEAR, raw)


RECHECK = "recheck"
"""shard_tally's answer when the sizes the caller holds cannot be brought up to date (the node's token moved on):
the caller asks shard_count."""


@dataclass(frozen=True, slots=True)
class SizeChanges:
    """shard_tally's answer: the node's change number now, the sizes (by shard id) changed since the one the
    caller sent (-1: a size the node does not keep), and each query's answer."""

    version: int
    changes: tuple[tuple[str, int], ...]
    answers: tuple[int, ...]


def shard_tally(node: str, raw: object, queries: int) -> SizeChanges | None:
    """shard_tally's reply for a call with `queries` queries: ``{'ok', change number, k, id, size, ...,
    answer...}``, or None for ``{'recheck'}``."""
    reply = _reply(node, scripts.SHARD_TALLY, raw)
    if reply[0] == _OK and len(reply) >= 3:
        version, k = _number(reply[1]), reply[2]
        if version is not None and type(k) is int and k >= 0 and len(reply) == 3 + 2 * k + queries:
            ids, sizes, answers = reply[3 : 3 + 2 * k : 2], reply[4 : 4 + 2 * k : 2], reply[3 + 2 * k :]
            if (
                all(type(i) is str for i in ids)
                and all(type(n) is int for n in sizes)
                and all(type(n) is int for n in answers)
            ):
                return SizeChanges(version, tuple(zip(ids, sizes, strict=True)), tuple(answers))
    elif reply[0] == RECHECK and len(reply) == 1:
        return None
    _wrong(node, scripts.SHARD_TALLY, raw, f"for {queries} queries")


def _number(raw: object) -> int | None:
    """A non-negative decimal integer sent as a string (a hash field's value), or None."""
    if type(raw) is str and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def shard_page(node: str, raw: object) -> ShardPage | Stale:
    """shard_page's reply: ``{'stale', actual}`` or ``{'ok', better, user, stored score, ...}``."""
    reply = _reply(node, scripts.SHARD_PAGE, raw)
    if reply[0] == _STALE and len(reply) == 2 and type(reply[1]) is str:
        return Stale(reply[1])
    if reply[0] == _OK and len(reply) % 2 == 0:
        better = _count(node, scripts.SHARD_PAGE, reply[1])
        try:
            rows = tuple((_text(m), int(float(s))) for m, s in zip(reply[2::2], reply[3::2], strict=True))
        except (TypeError, ValueError):
            pass
        else:
            return ShardPage(better, rows)
    _wrong(node, scripts.SHARD_PAGE, raw)


# ---- index scripts -----------------------------------------------------------------------------------------


class Committed(NamedTuple):
    """One update's answer from index_apply: committed (or kept, or a retry)."""

    kind: UpdateKind
    score: int
    """The answer: the member's score after the update (for a DUPLICATE, the first call's)."""
    applied: bool
    entry: IndexEntry | None
    """The member's entry after the call; None when it is not on the board (a retry of a removed member's
    update)."""


@dataclass(frozen=True, slots=True)
class PendingMove:
    """The member's entry holds a pending move (another writer's): it must be finished first, and the
    member's updates sent again."""

    entry: IndexEntry


@dataclass(frozen=True, slots=True)
class Refused:
    """One update refused on its own (IndexMode.EACH); nothing of it was written."""

    kind: RefusalKind


@dataclass(frozen=True, slots=True)
class Refusal:
    """An update that aborted a batch: `position` is 1-based among the updates sent in the call."""

    position: int
    kind: RefusalKind


@dataclass(frozen=True, slots=True)
class Aborted:
    """index_apply refused the batch (IndexMode.APPLY or CHECK): nothing was written. Never empty."""

    refusals: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class Checked:
    """index_apply's answer in IndexMode.CHECK: nothing was written, and these members' pending moves are to
    be finished before the batch is applied."""

    moves: tuple[PendingMove, ...]


@dataclass(frozen=True, slots=True)
class Answered:
    """index_apply's answer in IndexMode.APPLY or EACH: one per update sent, in order."""

    answers: tuple[Committed | PendingMove | Refused, ...]


_UPDATE_KINDS: dict[Any, UpdateKind] = {kind.value: kind for kind in UpdateKind}
_REFUSAL_KINDS: dict[Any, RefusalKind] = {kind.value: kind for kind in RefusalKind}
_SHORT_ANSWERS: dict[str, tuple[UpdateKind, bool]] = {
    "new": (UpdateKind.NEW, True),
    "upd": (UpdateKind.UPDATED, True),
    "kept": (UpdateKind.UPDATED, False),
}
"""index_apply's usual answers, three values in its reply: the code, then score and ver."""


def index_apply(node: str, raw: object, mode: IndexMode, users: Sequence[str]) -> Aborted | Checked | Answered:
    """index_apply's reply to a call in `mode` for updates of `users` (in order): ``{'abort', {i, kind}...}``,
    or ``{'ok', answer...}``; an answer is ``{kind, score, ver, applied, home, from, to, entry score}``,
    ``{'intent', user, score, ver, home, from, to}`` or (IndexMode.EACH) ``{'refused', kind}``, or for a new or
    updated entry without a crossing (the usual answer) three values in the reply itself: ``code, score, ver``
    (code ``'new'``, ``'upd'``, or ``'kept'`` for an update not applied; the entry is ``{score, ver, '@', '', ''}``).
    In IndexMode.CHECK the answers are the intents alone. Raises `StaleMap` for ``{'stale', floor}`` (nothing
    was written)."""
    reply = _reply(node, scripts.INDEX_APPLY, raw)
    _check_floor(node, scripts.INDEX_APPLY, reply)
    if reply[0] == _ABORT:
        return _aborted(node, reply, len(users))
    if reply[0] != _OK:
        _wrong(node, scripts.INDEX_APPLY, raw)
    if mode is IndexMode.CHECK:
        if len(reply) > len(users) + 1:
            _wrong(node, scripts.INDEX_APPLY, raw, f"{len(reply) - 1} intents for {len(users)} updates")
        return Checked(tuple(_pending_move(node, scripts.INDEX_APPLY, a) for a in islice(reply, 1, None)))
    answers: list[Committed | PendingMove | Refused] = []
    append = answers.append
    pos = start = 1
    try:
        for user in users:
            start = pos
            answer = reply[pos]
            short = _SHORT_ANSWERS.get(answer) if type(answer) is str else None
            if short is not None:  # the usual answer first: no crossing pending
                score, version = reply[pos + 1], reply[pos + 2]
                if not type(score) is type(version) is int:
                    raise ValueError
                pos += 3
                append(Committed(short[0], score, short[1], IndexEntry(user, score, version)))
                continue
            pos += 1
            kind = _UPDATE_KINDS.get(answer[0])
            if kind is not None:
                _, score, version, applied, home, from_, to, current = answer
                if not (
                    type(score) is type(version) is type(current) is int
                    and type(home) is type(from_) is type(to) is str
                    and (applied == 1 or applied == 0)
                ):
                    raise ValueError
                entry = IndexEntry(user, current, version, home, from_, to) if home else None
                append(Committed(kind, score, applied == 1, entry))
            elif answer[0] == _INTENT:
                append(_pending_move(node, scripts.INDEX_APPLY, answer))
            elif answer[0] == _REFUSED and mode is IndexMode.EACH and len(answer) == 2:
                append(Refused(_REFUSAL_KINDS[answer[1]]))
            else:
                raise ValueError
    except (TypeError, ValueError, KeyError, IndexError):
        at = reply[start] if start < len(reply) else None
        _wrong(node, scripts.INDEX_APPLY, at, f"answer {len(answers) + 1} of {len(users)}")
    if pos != len(reply):
        _wrong(node, scripts.INDEX_APPLY, raw, f"{len(reply) - pos} values left after {len(users)} answers")
    return Answered(tuple(answers))


def _aborted(node: str, reply: list[Any], updates: int) -> Aborted:
    refusals = []
    for item in islice(reply, 1, None):
        try:
            position, kind = item
            if type(position) is int and 1 <= position <= updates:
                refusals.append(Refusal(position, _REFUSAL_KINDS[kind]))
                continue
        except (TypeError, ValueError, KeyError):
            pass
        _wrong(node, scripts.INDEX_APPLY, reply, f"refusal {item!r} of a batch of {updates}")
    if not refusals:
        _wrong(node, scripts.INDEX_APPLY, reply, "an abort without a refusal")
    return Aborted(tuple(refusals))


@dataclass(frozen=True, slots=True)
class RemovalRecorded:
    """index_remove recorded the removal: `entry`'s move ``home -> ''`` is to be carried out."""

    entry: IndexEntry


def index_remove(node: str, raw: object, user: str) -> RemovalRecorded | PendingMove | None:
    """index_remove's reply for `user`: ``{'absent'}`` (None: not on the board), ``{'intent', score, ver,
    home, from, to}`` (another move first), or ``{'ok', score, ver, from}``; raises `StaleMap` for ``{'stale',
    floor}`` (nothing was written)."""
    reply = _reply(node, scripts.INDEX_REMOVE, raw)
    _check_floor(node, scripts.INDEX_REMOVE, reply)
    if reply[0] == _ABSENT and len(reply) == 1:
        return None
    if reply[0] == _INTENT:
        return _pending_move(node, scripts.INDEX_REMOVE, reply, user)
    if reply[0] == _OK and len(reply) == 4:
        score, version, from_ = reply[1:]
        if type(score) is type(version) is int and type(from_) is str:
            return RemovalRecorded(IndexEntry(user, score, version, from_=from_, to=""))
    _wrong(node, scripts.INDEX_REMOVE, raw)


def index_move(node: str, raw: object) -> int:
    """index_move's reply: how many of the call's moves it advanced."""
    return _count(node, scripts.INDEX_MOVE, raw)


def index_forget(node: str, raw: object) -> int:
    """index_forget's reply: how many pending-write marks it cleared."""
    return _count(node, scripts.INDEX_FORGET, raw)


def index_stale_moves(node: str, raw: object) -> list[str]:
    """index_stale_moves' reply: the users whose writes were marked pending long enough ago, oldest first."""
    return _texts(node, scripts.INDEX_STALE_MOVES, raw)


def index_rebuild(node: str, raw: object) -> list[str]:
    """index_rebuild's reply: the users whose entries it wrote."""
    return _texts(node, scripts.INDEX_REBUILD, raw)


@dataclass(frozen=True, slots=True)
class Imported:
    """A member index_import added, with its first version."""

    version: int


def index_import(node: str, raw: object, members: int) -> list[Imported | None]:
    """index_import's reply for a call with `members` members: the version of each, 0 (None here) for one it
    left alone; raises `StaleMap` for ``{'stale', floor}`` (nothing was written)."""
    if type(raw) is list and raw and raw[0] == _STALE:
        _check_floor(node, scripts.INDEX_IMPORT, raw)
    if type(raw) is list and len(raw) == members and all(type(v) is int for v in raw):
        return [Imported(v) if v else None for v in raw]
    _wrong(node, scripts.INDEX_IMPORT, raw, f"for {members} members")


@dataclass(frozen=True, slots=True)
class CollectionStep:
    """collect_tombstones' reply: tombstones deleted, stamped, hash fields looked at, and whether the walk
    passed its start."""

    deleted: int
    stamped: int
    looked_at: int
    wrapped: bool


def collect_tombstones(node: str, raw: object) -> CollectionStep:
    """collect_tombstones' reply ``{deleted, stamped, looked at, wrapped (1 or 0)}``."""
    if type(raw) is list and len(raw) == 4 and all(type(n) is int and n >= 0 for n in raw) and raw[3] <= 1:
        return CollectionStep(raw[0], raw[1], raw[2], raw[3] == 1)
    _wrong(node, scripts.COLLECT_TOMBSTONES, raw)


# ---- plain commands ----------------------------------------------------------------------------------------


def command_reply(args: Sequence[Any], reply: Any) -> Any:
    """`reply` to the command `args` in the shape redis-py (5.2, RESP2) gave callers for the commands they
    use: HGETALL a dict, SCAN (cursor, keys), SET True/None (its GET form the old value), ZINCRBY and ZSCORE a
    float; any other reply as it came (ZRANGE ... WITHSCORES flat: see `scored_members`)."""
    name = str(args[0]).upper()
    if name == "HGETALL":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    if name == "SCAN":
        return int(reply[0]), reply[1]
    if name == "SET":
        return reply if any(str(a).upper() == "GET" for a in args[3:]) else (reply and reply == "OK")
    if name in ("ZINCRBY", "ZSCORE"):
        return None if reply is None else float(reply)
    return reply


def scored_members(node: str, command: str, reply: object) -> list[tuple[str, int]]:
    """A sorted-set read's flat ``member, score, ...`` (ZRANGE ... WITHSCORES) as (member, integer score)
    pairs: rankshard only stores integers."""
    if type(reply) is list and len(reply) % 2 == 0:
        try:
            return [(_text(m), int(float(s))) for m, s in zip(reply[::2], reply[1::2], strict=True)]
        except (TypeError, ValueError):
            pass
    raise UnexpectedReply(node, command, f"{_shown(reply)} is not a list of members and their scores")


def command_count(node: str, command: str, reply: object) -> int:
    """A counting command's reply (ZCARD) as the count it is."""
    if type(reply) is int and reply >= 0:
        return reply
    raise UnexpectedReply(node, command, f"{_shown(reply)} is not a count")


# ---- shared parts ------------------------------------------------------------------------------------------


def _reply(node: str, script: Script, raw: object) -> list[Any]:
    """`raw` as a tagged reply: a list whose first item is a string."""
    if type(raw) is not list or not raw or type(raw[0]) is not str:
        _wrong(node, script, raw)
    return raw


def texts_or_none(node: str, command: str, raw: object, length: int) -> list[str | None]:
    """A command's list of `length` strings or nils (HMGET)."""
    if type(raw) is not list or len(raw) != length or not all(item is None or type(item) is str for item in raw):
        raise UnexpectedReply(node, command, f"{_shown(raw)} is not a list of {length} strings or nils")
    return raw


def texts(node: str, command: str, raw: object) -> list[str]:
    """A command's list of strings (members, user ids)."""
    if type(raw) is not list or not all(type(item) is str for item in raw):
        raise UnexpectedReply(node, command, f"{_shown(raw)} is not a list of strings")
    return raw


def unexpected(node: str, what: str, raw: object) -> UnexpectedReply:
    """The error for a reply of `what` (a script or a command) that is not of its shape."""
    return UnexpectedReply(node, what, f"{_shown(raw)} is not of its shape")


def _check_floor(node: str, script: Script, reply: list[Any]) -> None:
    """Raises `StaleMap` for an index script's ``{'stale', floor}``: the caller's map is older than the board's
    epoch floor on the node, and nothing was written."""
    if reply[0] == _STALE:
        if len(reply) == 2 and type(reply[1]) is int:
            raise StaleMap(node, f"the board's epoch floor there is {reply[1]}: the map is older")
        _wrong(node, script, reply, "a floor")


def _pending_move(node: str, script: Script, raw: object, user: str | None = None) -> PendingMove:
    """An intent: index_apply's ``{'intent', user, score, ver, home, from, to}``, or index_remove's (of
    `user`) ``{'intent', score, ver, home, from, to}``."""
    if type(raw) is list and len(raw) == (7 if user is None else 6) and raw[0] == _INTENT:
        if user is None:
            user = raw[1]
        score, version, home, from_, to = raw[-5:]
        if type(user) is str and type(score) is type(version) is int and type(home) is type(from_) is type(to) is str:
            return PendingMove(IndexEntry(user, score, version, home, from_, to))
    _wrong(node, script, raw, "an intent")


def _count(node: str, script: Script, raw: object) -> int:
    if type(raw) is not int or raw < 0:
        _wrong(node, script, raw, "a count")
    return raw


def _texts(node: str, script: Script, raw: object) -> list[str]:
    if type(raw) is not list or not all(type(item) is str for item in raw):
        _wrong(node, script, raw, "a list of user ids")
    return raw


def _text(value: object) -> str:
    if type(value) is not str:
        raise TypeError(value)
    return value


_SHOWN = 200
"""Characters of a reply an error shows at most."""


def _wrong(node: str, script: Script, raw: object, expected: str = "") -> NoReturn:
    where = f" ({expected})" if expected else ""
    raise UnexpectedReply(node, script.name, f"{_shown(raw)} is not of its shape{where}; see scripts/{script.name}.lua")


def _shown(raw: object) -> str:
    shown = repr(raw)
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "..."
