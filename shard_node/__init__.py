"""Everything that touches node data: key layout, Lua scripts, the write and read paths, moves."""

from ._admin import connect_cluster, create_board, delete_board, install_descriptors
from ._audit import Finding, FindingKind, audit_board
from ._carve import Carver, finish_abandoned
from ._carve_parts import JobFailed
from ._carve_plan import DRAINING, plan_merge, plan_move, plan_split
from ._client import DEFAULT_NODE_TIMEOUT, NODE_ERROR_KINDS, NodeClient, NodeObserver
from ._import import ImportInterrupted, import_members
from ._keys import IndexEntry
from ._layout import BoardLayout, Cluster
from ._moves import MOVE_STEPS, StepHook, finish_move
from ._new_node import check_new_node
from ._reads import (
    Entry,
    get_around,
    get_rank,
    get_ranks,
    get_top,
    rank_members,
    rank_of_scores,
    read_entries,
    read_entry,
    shard_sizes,
    windows_around,
)
from ._rebalance import (
    QUANTILES,
    SERVING_STATES,
    JobRunner,
    PlanStepFailed,
    board_stats,
    carry_out,
    describe_step,
    node_members,
    serving_nodes,
)
from ._repair import LostMembers, RepairReport, repair_board
from ._sweep import DEFAULT_MIN_AGE_MS, count_pending_marks, sweep_board
from ._tombstones import Collected, collect_tombstones
from ._writes import RemoveCall, Update, UpdateCall, UpdateOutcome, apply_each, apply_updates, remove_member

__all__ = [
    "Carver",
    "DRAINING",
    "JobFailed",
    "finish_abandoned",
    "plan_merge",
    "plan_move",
    "plan_split",
    "QUANTILES",
    "SERVING_STATES",
    "JobRunner",
    "PlanStepFailed",
    "board_stats",
    "carry_out",
    "describe_step",
    "node_members",
    "serving_nodes",
    "DEFAULT_MIN_AGE_MS",
    "Finding",
    "FindingKind",
    "LostMembers",
    "RepairReport",
    "audit_board",
    "repair_board",
    "sweep_board",
    "count_pending_marks",
    "Collected",
    "collect_tombstones",
    "DEFAULT_NODE_TIMEOUT",
    "MOVE_STEPS",
    "RemoveCall",
    "UpdateCall",
    "BoardLayout",
    "Cluster",
    "Entry",
    "IndexEntry",
    "NODE_ERROR_KINDS",
    "NodeClient",
    "NodeObserver",
    "StepHook",
    "Update",
    "UpdateOutcome",
    "apply_each",
    "apply_updates",
    "connect_cluster",
    "ImportInterrupted",
    "check_new_node",
    "create_board",
    "delete_board",
    "finish_move",
    "import_members",
    "get_around",
    "get_rank",
    "get_ranks",
    "get_top",
    "install_descriptors",
    "rank_of_scores",
    "rank_members",
    "read_entries",
    "read_entry",
    "remove_member",
    "shard_sizes",
    "windows_around",
]
