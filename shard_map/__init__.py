"""Pure model of boards, shard maps and index slots, and their PostgreSQL store (the control plane)."""

from ._errors import (
    AlreadyExists,
    ControlPlaneError,
    InvalidArgument,
    NodeError,
    NodeUnavailable,
    NotFound,
    OutOfRange,
    RankshardError,
    RequestIdConflict,
    ShardFrozen,
    StaleMap,
)
from ._limits import (
    DEFAULT_LIMIT,
    DEFAULT_RADIUS,
    MAX_BATCH,
    MAX_EXPECTED_MEMBERS,
    MAX_LIMIT,
    MAX_RADIUS,
    MAX_SCORE,
    check_board_name,
    check_count,
    check_expected_members,
    check_offset,
    check_request_id,
    check_score,
    check_user_id,
)
from ._model import (
    NUM_SLOTS,
    BoardConfig,
    Buckets,
    Operator,
    Shard,
    ShardMap,
    ShardState,
    SlotTable,
    SortOrder,
    check_boundaries,
    default_boundaries,
    ranges_for,
    slot_for,
    tiling_problems,
    user_hash,
)

__all__ = [
    "AlreadyExists",
    "BoardConfig",
    "Buckets",
    "ControlPlaneError",
    "DEFAULT_LIMIT",
    "DEFAULT_RADIUS",
    "InvalidArgument",
    "MAX_BATCH",
    "MAX_EXPECTED_MEMBERS",
    "MAX_LIMIT",
    "MAX_RADIUS",
    "MAX_SCORE",
    "NUM_SLOTS",
    "NodeError",
    "NodeUnavailable",
    "NotFound",
    "Operator",
    "OutOfRange",
    "RankshardError",
    "RequestIdConflict",
    "Shard",
    "ShardFrozen",
    "ShardMap",
    "ShardState",
    "SlotTable",
    "SortOrder",
    "StaleMap",
    "check_board_name",
    "check_boundaries",
    "check_count",
    "check_expected_members",
    "check_offset",
    "check_request_id",
    "check_score",
    "check_user_id",
    "default_boundaries",
    "ranges_for",
    "slot_for",
    "tiling_problems",
    "user_hash",
]

# The control plane store (PostgreSQL).
from ._migrate import SchemaMissing, schema_version  # noqa: E402
from ._nodes import Node, NodeInUse  # noqa: E402
from ._store import ControlPlane, StaleEpoch, control_plane_deadline  # noqa: E402

__all__ += [
    "ControlPlane",
    "Node",
    "NodeInUse",
    "SchemaMissing",
    "StaleEpoch",
    "control_plane_deadline",
    "schema_version",
]

# Every tunable of a process, and the values the contract fixes.
from ._settings import (  # noqa: E402
    DEFAULTS,
    FIXED,
    LOCAL_CLUSTER,
    RANKSHARD,
    ROUTER,
    Fixed,
    Settings,
    SettingsError,
    SettingSpec,
    setting_specs,
)

__all__ += [
    "DEFAULTS",
    "FIXED",
    "LOCAL_CLUSTER",
    "RANKSHARD",
    "ROUTER",
    "Fixed",
    "SettingSpec",
    "Settings",
    "SettingsError",
    "setting_specs",
]
