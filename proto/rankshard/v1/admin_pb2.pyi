from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SortOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SORT_ORDER_UNSPECIFIED: _ClassVar[SortOrder]
    SORT_ORDER_DESCENDING: _ClassVar[SortOrder]
    SORT_ORDER_ASCENDING: _ClassVar[SortOrder]

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_INCREMENT: _ClassVar[Operator]
    OPERATOR_BEST: _ClassVar[Operator]
    OPERATOR_SET: _ClassVar[Operator]
SORT_ORDER_UNSPECIFIED: SortOrder
SORT_ORDER_DESCENDING: SortOrder
SORT_ORDER_ASCENDING: SortOrder
OPERATOR_UNSPECIFIED: Operator
OPERATOR_INCREMENT: Operator
OPERATOR_BEST: Operator
OPERATOR_SET: Operator

class LeaderboardConfig(_message.Message):
    __slots__ = ("name", "sort_order", "operator", "boundaries", "expected_members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SORT_ORDER_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sort_order: SortOrder
    operator: Operator
    boundaries: _containers.RepeatedScalarFieldContainer[int]
    expected_members: int
    def __init__(self, name: _Optional[str] = ..., sort_order: _Optional[_Union[SortOrder, str]] = ..., operator: _Optional[_Union[Operator, str]] = ..., boundaries: _Optional[_Iterable[int]] = ..., expected_members: _Optional[int] = ...) -> None: ...

class GetLeaderboardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListLeaderboardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteLeaderboardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteLeaderboardResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class ListLeaderboardsResponse(_message.Message):
    __slots__ = ("leaderboards",)
    LEADERBOARDS_FIELD_NUMBER: _ClassVar[int]
    leaderboards: _containers.RepeatedCompositeFieldContainer[LeaderboardConfig]
    def __init__(self, leaderboards: _Optional[_Iterable[_Union[LeaderboardConfig, _Mapping]]] = ...) -> None: ...

class GetShardMapRequest(_message.Message):
    __slots__ = ("leaderboard",)
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    def __init__(self, leaderboard: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("id", "lower", "upper", "node", "members", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    lower: int
    upper: int
    node: str
    members: int
    state: str
    def __init__(self, id: _Optional[str] = ..., lower: _Optional[int] = ..., upper: _Optional[int] = ..., node: _Optional[str] = ..., members: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ShardMap(_message.Message):
    __slots__ = ("leaderboard", "epoch", "shards")
    LEADERBOARD_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    leaderboard: str
    epoch: int
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    def __init__(self, leaderboard: _Optional[str] = ..., epoch: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ...) -> None: ...
