"""Every Redis key and stored value format rankshard uses on a node, in one place.

Keys (``b`` board, ``s`` shard id, ``u`` user id). A ``/`` ends the board name: board names cannot
contain one, so no two boards' keys collide and ``rs:i:{b}/*`` matches one board's keys only.

- ``rs:i:{b}/{slot}:{bucket}``  hash  user -> index entry ``score|ver|home|from|to`` (see `IndexEntry`),
  or ``~ver`` for a removed member (a tombstone keeps versions monotonic if the member comes back).
  Users are spread over ``INDEX_BUCKETS`` small hashes per slot so each stays compact (listpack).
- ``rs:r:{b}/{u}``            list  the member's last 8 request ids ``ts|value|score|rid`` (1 h TTL)
- ``rs:m:{b}/``             zset  on each index node: users with a write, move or removal committed
  on the index but not yet confirmed done in the shards -> ms of the commit; the sweeper finishes
  those older than a few seconds (a writer that crashed or lost its node in between).
- ``rs:z:{b}/{s}``            zset  the shard's members; stored score = score, negated on descending
  boards, so ascending order is best-first and ties fall in user-id order.
- ``rs:v:{b}/{s}``            hash  user -> version of the member's last write to this shard; ``~ver``
  after removal (a tombstone, so a late older write cannot resurrect the member).
- ``rs:d:{b}/{s}``            string the shard descriptor ``lower|upper|generation|state``: the fence.
"""

from __future__ import annotations

from dataclasses import dataclass

from shard_map import NUM_SLOTS, Shard

INDEX_BUCKETS = 64
DEDUP_DEPTH = 8
DEDUP_WINDOW_MS = 3_600_000


def index_key(board: str, user_hash: int) -> str:
    slot = user_hash % NUM_SLOTS
    bucket = (user_hash // NUM_SLOTS) % INDEX_BUCKETS
    return f"rs:i:{board}/{slot}:{bucket}"


def index_pattern(board: str) -> str:
    return f"rs:i:{board}/*"


def dedup_key(board: str, user_id: str) -> str:
    return f"rs:r:{board}/{user_id}"


def moves_key(board: str) -> str:
    return f"rs:m:{board}/"


def shard_key(board: str, shard_id: str) -> str:
    return f"rs:z:{board}/{shard_id}"


def versions_key(board: str, shard_id: str) -> str:
    return f"rs:v:{board}/{shard_id}"


def descriptor_key(board: str, shard_id: str) -> str:
    return f"rs:d:{board}/{shard_id}"


def descriptor(shard: Shard) -> str:
    """The value a node holds for `shard`; a write planned with another value is refused."""
    lower = "" if shard.lower is None else shard.lower
    upper = "" if shard.upper is None else shard.upper
    return f"{lower}|{upper}|{shard.generation}|{shard.state}"


def descriptor_state(value: str) -> str:
    return value.rsplit("|", 1)[-1] if value else ""


def stored_score(score: int, descending: bool) -> int:
    return -score if descending else score


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A member's authoritative state on its index slot.

    `home` is the shard the member lives in. A pending move is ``from_ -> to`` (``to == ""`` for a
    removal); while one is pending the index refuses further updates until it is rolled forward.
    """

    user_id: str
    score: int
    version: int
    home: str
    from_: str = ""
    to: str = ""

    @property
    def moving(self) -> bool:
        return self.from_ != ""

    @classmethod
    def parse(cls, user_id: str, raw: str | None) -> IndexEntry | None:
        """None for an absent or removed member."""
        if raw is None or raw.startswith("~"):
            return None
        score, version, home, from_, to = raw.split("|", 4)
        return cls(user_id, int(score), int(version), home, from_, to)
