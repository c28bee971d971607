"""The gRPC router: `rankshard.v1.Leaderboard` and `rankshard.v1.Admin` over the shard_node data path."""

from ._inproc import in_process_routers
from ._metrics import MetricsListenError
from ._reflection import REFLECTION_V1
from ._security import SecurityError
from ._server import SERVICE_NAMES, ListenError, running_router, serve
from ._status import STATUS_OF, status_of

__all__ = [
    "REFLECTION_V1",
    "SERVICE_NAMES",
    "STATUS_OF",
    "in_process_routers",
    "ListenError",
    "SecurityError",
    "MetricsListenError",
    "running_router",
    "serve",
    "status_of",
]
