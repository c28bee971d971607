"""Every Redis key and stored value format rankshard uses on a node, in one place.

Keys (``b`` board, ``s`` shard id, ``h`` the user's `user_hash`). A ``/`` ends the board name: board
names cannot contain one, so no two boards' keys collide and ``rs:i:{b}/*`` matches one board's keys only.

Per-user data lives in many small hashes rather than one key per user or one big hash: Valkey keeps a
hash of short entries as a listpack (rankshard's nodes run with up to 1,024), about 18 B per entry against
about 54 B in a big hash and over 100 B for a key of its own. How many hashes a board's
index and version registers use is the board's (`shard_map.Buckets`), sized at its creation for the members
it expects; a board that outgrows that has longer hashes, then ordinary ones (more memory, same behaviour).

- ``rs:i:{b}/{slot}:{bucket}``  hash  user -> index entry ``score|ver|@|from|to|rgen`` (see `IndexEntry`;
  ``rgen``: the generation of the member's request-id records mod 100, '' for none, and absent from entries
  written before it existed: then every generation is looked at),
  or the tombstone ``~ver|ms`` of a removed member (see Tombstones below). Under the field ``''`` (no
  user id is empty) of bucket 0, the slot's floor ``~ver`` once tombstones were collected from the
  slot: the highest version any of them had. A member without an entry or a tombstone (never seen,
  or its tombstone collected) comes at the floor's version + 1 (1 when there is none), above anything
  a version register may still hold for an earlier incarnation of it.
  ``slot = h % NUM_SLOTS`` (the slot table places it on a node), ``bucket = h // NUM_SLOTS % buckets.index``.
- ``rs:r:{b}/{bucket}:{gen}``  hash  on the index node: user -> the member's last request ids (at most
  ``DEDUP_DEPTH``), oldest first, packed: the byte 1, the number of records (one byte), then per record
  struct ``>I6ddB`` (``ts``, the node's clock in ms; the submitted value; the score answered; the byte
  length of ``rid``) followed by ``rid``: any bytes (``|``, NUL, newlines), cut out by that length.
  ``gen = now_ms // DEDUP_GEN_MS``. Older releases stored text, ``ts|value|score|len|rid`` back to back with
  ``ts`` in ms since the start of generation ``gen``: read as well, and stored again packed when the
  member's records are next written; text records that do not parse (a NUL id was once stored cut at the
  NUL) are dropped then. ``bucket = h % DEDUP_BUCKETS``. A member's records sit in one generation, the one of
  its last update with a request id, which its index entry names (one lookup, not one per generation); the
  hash expires ``DEDUP_WINDOW_MS`` after its generation ends, so a member idle for an hour costs no dedup
  memory once that generation's hash is gone (at most ``DEDUP_GEN_MS`` later).
  The router names ``rs:r:{b}/{bucket}``; the index script appends the generations it reads and writes.
- ``rs:m:{b}/``             zset  on each index node: users with a write, move or removal committed
  on the index but not yet confirmed done in the shards -> ms of the commit; the sweeper finishes
  those older than a few seconds (a writer that crashed or lost its node in between).
- ``rs:z:{b}/{s}``            zset  the shard's members; stored score = score, negated on descending
  boards, so ascending order is best-first and ties fall in user-id order.
- ``rs:v:{b}/{bucket}``       hash  on each node holding shards of the board: user -> the version of the
  member's last write to any shard of the board on this node; the tombstone ``~ver|ms`` once the member
  left a shard here (removed, or moved to another shard), so a late older write cannot bring it back.
  ``bucket = h % buckets.versions``. One register for all the node's shards: versions of a member only
  grow, and every write or removal a register refuses has been overtaken by a newer version of that member.
- ``rs:d:{b}/{s}``            string the shard descriptor ``lower|upper|generation|state``: the fence. Writes
  must match it whole; reads all but the state (``shard_map.ShardState``).
- ``rs:n:{b}/``              hash  on each node holding shards of the board: the shards' kept sizes. Field ``s``:
  how many members of ``rs:z:{b}/{s}`` lie inside the range of descriptor ``s``; field ``>s``: that range in stored
  scores, ``lo hi``; both absent until a full count (``shard_count.lua``) sets them, and dropped with every
  change to the descriptor. Field ``''``: the token the sizes are good under, renewed with every descriptor change
  (``count:seconds.microseconds`` of the node's clock). Every script that changes a shard's members inside its
  range keeps its size, so a read that checked every descriptor once under a token (``shard_count.lua``) reads
  the sizes alone while the token holds (``shard_tally.lua``). Field ``#``: how many size changes the node has
  kept (each keeps its shard's size and takes the next number).
- ``rs:o:{b}/``              zset  beside it: shard id -> the number of its size's last change, so a reader holding
  the sizes at change ``c`` asks for the shards changed since (``ZRANGEBYSCORE (c +inf``) and nothing else.
- ``rs:e:{b}/``              string on each index node: the board's epoch floor. Index scripts refuse a router
  whose map is older, before writing anything.
- ``rs:c:{b}/{s}``            hash  while a job carves from shard s: ``lo``, ``hi`` (the carved range in stored
  scores, ``[lo, hi)``), ``deadline`` (node ms at which a freeze ends by itself).
- ``rs:y:{b}/{s}``            set   while a job carves from shard s: the members written or removed there whose old
  or new score lies in the carved range since the job began (its catch-up re-reads them);
  ``rs:w:{b}/{s}`` the ones a catch-up round has taken and not yet settled in the target.
- ``rs:t:{b}/``              string on every node: where the node's tombstone collection goes on,
  ``position hscan-cursor`` (see `collect_tombstones.lua`).

Tombstones: ``~ver|ms``, ``ms`` the time the node wrote it, ``ver`` the version it refuses writes up to.
Nothing needs one once it is older than ``TOMBSTONE_TTL_MS``: every write it could refuse was committed
earlier still and has long given up, and every request id of the removed member has left the dedup
window. Collection (`collect_tombstones.lua`, run by the router's sweeper) deletes those, an index
tombstone once its version is in its slot's floor. The plain ``~ver``
of older releases has no time: collection stamps it with the time it first sees it, and deletes it
``TOMBSTONE_TTL_MS`` later.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankshard.shard_map import NUM_SLOTS, Buckets, Shard

KEY_PREFIX = "rs:"
"""Every key rankshard writes starts with this: a node holding any other key is not rankshard's alone."""

DEDUP_BUCKETS = 8192
DEDUP_DEPTH = 8
DEDUP_WINDOW_MS = 3_600_000
DEDUP_GEN_MS = 300_000
"""The last three are also spelled out in ``scripts/index_apply.lua``."""

WRITE_LIFETIME_MS = 600_000
"""No write is still on its way to a shard this long after its index commit: every node call times out
within seconds and a write makes a bounded number of them (what a crashed writer leaves, the sweeper
finishes within seconds)."""

TOMBSTONE_TTL_MS = DEDUP_WINDOW_MS + WRITE_LIFETIME_MS
"""How old a tombstone is when collection deletes it (see Tombstones above)."""


def index_key(board: str, buckets: Buckets, user_hash: int) -> str:
    slot = user_hash % NUM_SLOTS
    bucket = (user_hash // NUM_SLOTS) % buckets.index
    return f"{index_stem(board)}{slot}:{bucket}"


def index_stem(board: str) -> str:
    """What the board's index keys start with, before ``{slot}:{bucket}``."""
    return f"rs:i:{board}/"


def index_pattern(board: str) -> str:
    return f"rs:i:{board}/*"


def dedup_key(board: str, user_hash: int) -> str:
    """The stem of the user's request-id hashes: the index script appends ``:{gen}``."""
    return f"rs:r:{board}/{user_hash % DEDUP_BUCKETS}"


def moves_key(board: str) -> str:
    return f"rs:m:{board}/"


def collection_key(board: str) -> str:
    return f"rs:t:{board}/"


def shard_key(board: str, shard_id: str) -> str:
    return f"{shard_stem(board)}{shard_id}"


def versions_key(board: str, buckets: Buckets, user_hash: int) -> str:
    return f"{versions_stem(board)}{user_hash % buckets.versions}"


def versions_stem(board: str) -> str:
    """What the board's version-register keys start with, before ``{bucket}``."""
    return f"rs:v:{board}/"


def shard_data_pattern(board: str) -> str:
    """Keys that belong to one shard of `board` (zsets and descriptors); the shard id ends the key."""
    return f"rs:[zd]:{board}/*"


def board_pattern(board: str) -> str:
    """Every key of `board`, of every kind (board names hold no glob character, and ``?`` is one letter, so
    ``rs:?:a/*`` never matches a key of board ``x:a``)."""
    return f"rs:?:{board}/*"


def registered_version(raw: str | None) -> int:
    """The version a version register holds: ``ver``, or a tombstone ``~ver|ms`` (``~ver`` from older
    releases); 0 for none."""
    if not raw:
        return 0
    return int(raw.lstrip("~").split("|", 1)[0])


def sizes_key(board: str) -> str:
    return f"rs:n:{board}/"


def size_changes_key(board: str) -> str:
    return f"rs:o:{board}/"


def shard_stem(board: str) -> str:
    """What the board's shard keys start with, before the shard id."""
    return f"rs:z:{board}/"


def descriptor_key(board: str, shard_id: str) -> str:
    return f"{descriptor_stem(board)}{shard_id}"


def descriptor_stem(board: str) -> str:
    """What the board's descriptor keys start with, before the shard id."""
    return f"rs:d:{board}/"


def descriptor(shard: Shard) -> str:
    """The value a node holds for `shard`; a write planned with another value is refused."""
    lower = "" if shard.lower is None else shard.lower
    upper = "" if shard.upper is None else shard.upper
    return f"{lower}|{upper}|{shard.generation}|{shard.state}"


def read_fence(shard: Shard) -> str:
    """What reads compare a shard's descriptor with: all of it but the state (``lower|upper|generation|``)."""
    return descriptor(shard)[: -len(shard.state)]


UNBOUNDED = 2**53
"""Beyond every score (|score| <= 2^53 - 1): the stored end of an unbounded range."""


def stored_range(lower: int | None, upper: int | None, descending: bool) -> tuple[str, str]:
    """The client range ``[lower, upper)`` in stored scores, as ``[lo, hi)``: scores are integers, so a
    descending board's ``(-upper, -lower]`` is ``[-upper + 1, -lower + 1)``."""
    if descending:
        lo = -UNBOUNDED if upper is None else -upper + 1
        hi = UNBOUNDED if lower is None else -lower + 1
    else:
        lo = -UNBOUNDED if lower is None else lower
        hi = UNBOUNDED if upper is None else upper
    return str(lo), str(hi)


def carve_key(board: str, shard_id: str) -> str:
    """The hash of a job carving from the shard (see the key list above)."""
    return f"rs:c:{board}/{shard_id}"


def dirty_key(board: str, shard_id: str) -> str:
    return f"rs:y:{board}/{shard_id}"


def taken_key(board: str, shard_id: str) -> str:
    return f"rs:w:{board}/{shard_id}"


def floor_key(board: str) -> str:
    return f"rs:e:{board}/"


def descriptor_state(value: str) -> str:
    return value.rsplit("|", 1)[-1] if value else ""


def stored_score(score: int, descending: bool) -> int:
    return -score if descending else score


DERIVED = "@"
"""An index entry's home (and a crossing's destination) in this release: the shard the score falls in."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A member's authoritative state on its index slot.

    Where the member lives is derived from its score under the reader's map (`BoardLayout.home_of`), so
    splits, merges and moves never rewrite entries. A pending crossing is ``from_ -> to``: `from_` is
    ``@score``, the previous score (its shard is the one that score falls in), `to` is ``@`` (the shard of
    `score`) or ``""`` for a removal. While one is pending the index refuses further updates of the member
    until it is rolled forward. Entries of older releases name shard ids in `home`, `from_` and `to`: a
    home is ignored (it always was the score's shard), a crossing's ids are used as they are.
    """

    user_id: str
    score: int
    version: int
    home: str = DERIVED
    from_: str = ""
    to: str = ""

    @property
    def moving(self) -> bool:
        return self.from_ != ""

    @property
    def source_score(self) -> int | None:
        """The score a pending crossing leaves from; None when none is pending or an older release named a shard."""
        return int(self.from_[1:]) if self.from_.startswith(DERIVED) else None

    def stored(self, rgen: str | None = "") -> str:
        """The hash value of this entry, as the index scripts write it (``format_entry``); `rgen` names
        where its request-id records are ('' none; None leaves the field out, as older entries have it)."""
        fields = f"{self.score}|{self.version}|{self.home}|{self.from_}|{self.to}"
        return fields if rgen is None else f"{fields}|{rgen}"

    @classmethod
    def parse(cls, user_id: str, raw: str | None) -> IndexEntry | None:
        """None for an absent or removed member."""
        if raw is None or raw.startswith("~"):
            return None
        # A sixth field (where the member's request-id records are) is the index script's alone.
        score, version, home, from_, to = raw.split("|", 5)[:5]
        return cls(user_id, int(score), int(version), home, from_, to)


def records_generation(raw: str) -> str | None:
    """The ``rgen`` field of a stored index entry; None when the entry predates the field."""
    fields = raw.split("|", 5)
    return fields[5] if len(fields) == 6 else None
