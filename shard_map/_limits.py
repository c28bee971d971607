"""Input rules of docs/api.md ("Limits and errors"), as pure checks.

Every check raises `InvalidArgument` naming the field it was given, so callers pass the field's name as
the client sees it (``updates[3].user_id``).
"""

from __future__ import annotations

import re

from ._errors import InvalidArgument

MAX_SCORE = 2**53 - 1
"""Largest |score|: every integer up to it is exact in the double a Redis sorted set stores."""

MAX_USER_ID_BYTES = 128
MAX_REQUEST_ID_BYTES = 128
MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
MAX_RADIUS = 100
DEFAULT_RADIUS = 4
MAX_BATCH = 1000
MAX_EXPECTED_MEMBERS = 10**10

_BOARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# C0 controls, DEL and C1 controls: they break logs and terminals, and no game needs them in an id.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_board_name(name: str, field: str = "leaderboard") -> str:
    if not name:
        raise InvalidArgument(field, "is required")
    if not _BOARD_NAME.fullmatch(name):
        raise InvalidArgument(field, f"{name[:80]!r} must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}$")
    return name


def check_user_id(user_id: str, field: str = "user_id") -> str:
    if not user_id:
        raise InvalidArgument(field, "is required")
    if len(user_id.encode("utf-8", "surrogatepass")) > MAX_USER_ID_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_USER_ID_BYTES} bytes of UTF-8")
    if _CONTROL.search(user_id):
        raise InvalidArgument(field, "contains a control character")
    return user_id


def check_score(score: int, field: str = "score") -> int:
    if not -MAX_SCORE <= score <= MAX_SCORE:
        raise InvalidArgument(field, f"{score} is outside ±{MAX_SCORE} (2^53 - 1)")
    return score


def check_request_id(request_id: str, field: str = "request_id") -> str:
    if len(request_id.encode("utf-8", "surrogatepass")) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_REQUEST_ID_BYTES} bytes")
    return request_id


def check_count(value: int, field: str, maximum: int, default: int | None = None) -> int:
    """Checks 0 <= value <= maximum; returns `default` for 0 when one is given."""
    if not 0 <= value <= maximum:
        raise InvalidArgument(field, f"{value} is outside 0..{maximum}")
    if value == 0 and default is not None:
        return default
    return value


def check_offset(offset: int, field: str = "offset") -> int:
    if offset < 0:
        raise InvalidArgument(field, f"{offset} is negative")
    return offset


def check_expected_members(members: int, field: str = "expected_members") -> int:
    if not 0 <= members <= MAX_EXPECTED_MEMBERS:
        raise InvalidArgument(field, f"{members} is outside 0..{MAX_EXPECTED_MEMBERS:,}")
    return members
