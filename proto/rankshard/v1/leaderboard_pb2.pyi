from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("user_id", "score", "rank")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: int
    rank: int
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[int] = ..., rank: _Optional[int] = ...) -> None: ...

class UpdateScoreRequest(_message.Message):
    __slots__ = ("leaderboard", "user_id", "score", "request_id")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    user_id: str
    score: int
    request_id: str
    def __init__(self, leaderboard: _Optional[str] = ..., user_id: _Optional[str] = ..., score: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateScoreResponse(_message.Message):
    __slots__ = ("score", "rank", "applied")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    score: int
    rank: int
    applied: bool
    def __init__(self, score: _Optional[int] = ..., rank: _Optional[int] = ..., applied: bool = ...) -> None: ...

class ScoreUpdate(_message.Message):
    __slots__ = ("user_id", "score", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: int
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateResult(_message.Message):
    __slots__ = ("score", "rank", "applied")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    score: int
    rank: int
    applied: bool
    def __init__(self, score: _Optional[int] = ..., rank: _Optional[int] = ..., applied: bool = ...) -> None: ...

class BatchUpdateScoresRequest(_message.Message):
    __slots__ = ("leaderboard", "updates")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    updates: _containers.RepeatedCompositeFieldContainer[ScoreUpdate]
    def __init__(self, leaderboard: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[ScoreUpdate, _Mapping]]] = ...) -> None: ...

class BatchUpdateScoresResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpdateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpdateResult, _Mapping]]] = ...) -> None: ...

class GetRankRequest(_message.Message):
    __slots__ = ("leaderboard", "user_id")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    user_id: str
    def __init__(self, leaderboard: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class GetRankResponse(_message.Message):
    __slots__ = ("entry", "total", "percentile")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    total: int
    percentile: float
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., total: _Optional[int] = ..., percentile: _Optional[float] = ...) -> None: ...

class GetRanksRequest(_message.Message):
    __slots__ = ("leaderboard", "user_ids")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, leaderboard: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRanksResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class GetTopRequest(_message.Message):
    __slots__ = ("leaderboard", "limit", "offset")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    limit: int
    offset: int
    def __init__(self, leaderboard: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class GetTopResponse(_message.Message):
    __slots__ = ("entries", "total")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    total: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class GetAroundRequest(_message.Message):
    __slots__ = ("leaderboard", "user_id", "radius")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    user_id: str
    radius: int
    def __init__(self, leaderboard: _Optional[str] = ..., user_id: _Optional[str] = ..., radius: _Optional[int] = ...) -> None: ...

class GetAroundResponse(_message.Message):
    __slots__ = ("entries", "total")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    total: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("leaderboard", "user_id")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    user_id: str
    def __init__(self, leaderboard: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveMemberResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: bool = ...) -> None: ...
