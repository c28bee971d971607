"""Requests to domain values: every docs/api.md limit checked before anything is read or written."""

from __future__ import annotations

from rankshard.shard_map import (
    DEFAULT_LIMIT,
    DEFAULT_RADIUS,
    MAX_BATCH,
    MAX_LIMIT,
    MAX_RADIUS,
    InvalidArgument,
    check_board_name,
    check_count,
    check_offset,
    check_request_id,
    check_score,
    check_user_id,
)
from rankshard.shard_node import Update
from rankshard.v1 import leaderboard_pb2 as pb


def update(request: pb.UpdateScoreRequest) -> tuple[str, Update]:
    board = check_board_name(request.leaderboard)
    rid = request.request_id if request.HasField("request_id") else ""
    return board, Update(check_user_id(request.user_id), check_score(request.score), check_request_id(rid))


def batch(request: pb.BatchUpdateScoresRequest) -> tuple[str, list[Update]]:
    board = check_board_name(request.leaderboard)
    if not request.updates:
        raise InvalidArgument("updates", "is empty")
    if len(request.updates) > MAX_BATCH:
        raise InvalidArgument("updates", f"has {len(request.updates)} items; at most {MAX_BATCH}")
    return board, [
        Update(
            check_user_id(u.user_id, f"updates[{i}].user_id"),
            check_score(u.score, f"updates[{i}].score"),
            check_request_id(u.request_id, f"updates[{i}].request_id"),
        )
        for i, u in enumerate(request.updates)
    ]


def member(request: pb.GetRankRequest | pb.GetAroundRequest | pb.RemoveMemberRequest) -> tuple[str, str]:
    return check_board_name(request.leaderboard), check_user_id(request.user_id)


def members(request: pb.GetRanksRequest) -> tuple[str, list[str]]:
    board = check_board_name(request.leaderboard)
    if len(request.user_ids) > MAX_BATCH:
        raise InvalidArgument("user_ids", f"has {len(request.user_ids)} ids; at most {MAX_BATCH}")
    return board, [check_user_id(u, f"user_ids[{i}]") for i, u in enumerate(request.user_ids)]


def page(request: pb.GetTopRequest) -> tuple[str, int, int]:
    board = check_board_name(request.leaderboard)
    limit = check_count(request.limit, "limit", MAX_LIMIT, DEFAULT_LIMIT)
    return board, check_offset(request.offset), limit


def radius(request: pb.GetAroundRequest) -> int:
    return check_count(request.radius, "radius", MAX_RADIUS, DEFAULT_RADIUS)
