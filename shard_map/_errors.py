"""The one exception tree of rankshard.

    RankshardError
     ├── InvalidArgument          bad input; names the field (→ INVALID_ARGUMENT)
     │    └── OutOfRange          an increment would leave the exact-integer range (→ OUT_OF_RANGE)
     ├── NotFound                 unknown board or member (→ NOT_FOUND)
     ├── AlreadyExists            board name taken (→ ALREADY_EXISTS)
     ├── RequestIdConflict        a request id reused with other parameters (→ FAILED_PRECONDITION)
     ├── NodeError                a data node could not serve the call
     │    ├── NodeUnavailable     down, unreachable or too slow (→ UNAVAILABLE, safe to retry)
     │    ├── StaleMap            the node's shard descriptor disagrees with the caller's map (reload, retry)
     │    ├── ShardFrozen         the shard is fenced for a migration step (retry shortly)
     │    └── UnexpectedReply     the node answered a script with a reply rankshard does not understand
     └── ControlPlaneError       PostgreSQL could not be reached or refused (→ UNAVAILABLE)

Adapters translate redis, psycopg and grpc exceptions into these at the package boundary
(``raise ... from exc``); nothing else crosses a package boundary.
"""

from __future__ import annotations


class RankshardError(Exception):
    """Base of every error rankshard raises on purpose."""


class InvalidArgument(RankshardError):
    """Input broke a rule of docs/api.md's limits; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class OutOfRange(InvalidArgument):
    """An increment would take a score outside |x| <= 2^53 - 1; nothing was applied."""


class NotFound(RankshardError):
    """An unknown board, member, shard or node; the message names it."""


class AlreadyExists(RankshardError):
    """A board (or node) of that name exists already."""


class RequestIdConflict(RankshardError):
    """A request id seen before for this member came back with different parameters."""


class NodeError(RankshardError):
    """A data node could not serve the call."""

    def __init__(self, node: str, problem: str) -> None:
        super().__init__(f"node {node}: {problem}")
        self.node = node


class NodeUnavailable(NodeError):
    """The node is down, unreachable, or did not answer within the deadline."""


class StaleMap(NodeError):
    """The node's shard descriptor does not match the caller's shard map: reload the map and retry.

    `passing` says the node is mid-way through a rebalancing job (it is behind the control plane, or in one of a
    job's states): a reload may show the same map for a moment, and a retry soon after succeeds.
    """

    def __init__(self, node: str, problem: str, passing: bool = False) -> None:
        super().__init__(node, problem)
        self.passing = passing


class ShardFrozen(NodeError):
    """The shard is briefly fenced by a migration step: retry until the deadline."""


class UnexpectedReply(NodeError):
    """The node answered `script` with a reply of another shape than the script gives (shard_node/_replies.py):
    it is not running rankshard's scripts, or a script and its decoder disagree. The message says what was wrong."""

    def __init__(self, node: str, script: str, problem: str) -> None:
        super().__init__(node, f"unexpected reply to {script}: {problem}")
        self.script = script


class ControlPlaneError(RankshardError):
    """The control plane (PostgreSQL) could not be reached or refused the change."""
