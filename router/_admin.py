"""`rankshard.v1.Admin`: board management for SRE tooling."""

from __future__ import annotations

import grpc

from rankshard.shard_map import (
    BoardConfig,
    InvalidArgument,
    Operator,
    SortOrder,
    check_board_name,
    check_expected_members,
)
from rankshard.shard_node import BoardLayout, create_board, delete_board, shard_sizes
from rankshard.v1 import admin_pb2 as pb
from rankshard.v1 import admin_pb2_grpc as pb_grpc

from ._catalog import Catalog
from ._metrics import RouterMetrics
from ._status import handler

_ORDER_TO_PROTO = {SortOrder.DESCENDING: pb.SORT_ORDER_DESCENDING, SortOrder.ASCENDING: pb.SORT_ORDER_ASCENDING}
_OPERATOR_TO_PROTO = {
    Operator.INCREMENT: pb.OPERATOR_INCREMENT,
    Operator.BEST: pb.OPERATOR_BEST,
    Operator.SET: pb.OPERATOR_SET,
}


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, catalog: Catalog, call_deadline: float, metrics: RouterMetrics | None = None) -> None:
        self.catalog = catalog
        self.call_deadline = call_deadline
        self.metrics = metrics

    @handler
    async def CreateLeaderboard(
        self, request: pb.LeaderboardConfig, context: grpc.aio.ServicerContext
    ) -> pb.LeaderboardConfig:
        config = config_from_proto(request)
        layout = await create_board(self.catalog.control_plane, self.catalog.cluster, config, request.boundaries)
        self.catalog.adopt(layout)
        return config_to_proto(layout)

    @handler
    async def GetLeaderboard(
        self, request: pb.GetLeaderboardRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaderboardConfig:
        return config_to_proto(await self.catalog.refresh(check_board_name(request.name, "name")))

    @handler
    async def ListLeaderboards(
        self, request: pb.ListLeaderboardsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLeaderboardsResponse:
        maps = await self.catalog.control_plane.shard_maps()
        configs = await self.catalog.control_plane.list_boards()
        return pb.ListLeaderboardsResponse(
            leaderboards=[config_to_proto(BoardLayout(c, maps[c.name])) for c in configs]
        )

    @handler
    async def GetShardMap(self, request: pb.GetShardMapRequest, context: grpc.aio.ServicerContext) -> pb.ShardMap:
        layout = await self.catalog.refresh(check_board_name(request.leaderboard))
        sizes = await shard_sizes(self.catalog.cluster, layout)
        return pb.ShardMap(
            leaderboard=layout.board,
            epoch=layout.map.epoch,
            shards=[
                pb.Shard(id=s.id, lower=s.lower, upper=s.upper, node=s.node, members=sizes[s.id], state=s.state)
                for s in layout.map.shards
            ],
        )

    @handler
    async def DeleteLeaderboard(
        self, request: pb.DeleteLeaderboardRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteLeaderboardResponse:
        name = check_board_name(request.name, "name")
        try:
            await delete_board(self.catalog.control_plane, self.catalog.cluster, name)
        finally:
            # Hidden from the moment the delete started, even if a node kept it from finishing.
            self.catalog.forget(name)
        return pb.DeleteLeaderboardResponse(deleted=True)


def config_from_proto(request: pb.LeaderboardConfig) -> BoardConfig:
    name = check_board_name(request.name, "name")
    try:
        order = SortOrder(request.sort_order or SortOrder.DESCENDING)
    except ValueError:
        raise InvalidArgument("sort_order", f"{request.sort_order} is not a SortOrder") from None
    try:
        operator = Operator(request.operator or Operator.INCREMENT)
    except ValueError:
        raise InvalidArgument("operator", f"{request.operator} is not an Operator") from None
    return BoardConfig(name, order, operator, check_expected_members(request.expected_members))


def config_to_proto(layout: BoardLayout) -> pb.LeaderboardConfig:
    c = layout.config
    return pb.LeaderboardConfig(
        name=c.name,
        sort_order=_ORDER_TO_PROTO[c.sort_order],
        operator=_OPERATOR_TO_PROTO[c.operator],
        boundaries=layout.map.boundaries,
        expected_members=c.expected_members,
    )
