"""The `rankshard` command line and the local cluster launcher. Nothing imports this package."""

import os

# This package's processes start servers with fork + exec (`_local.die_with_parent` runs between them) while gRPC
# threads run. gRPC's own fork handlers, on by default, then run in the child and can crash it before it execs
# ("Check failed: next_worker->state == KICKED"). No child of ours uses gRPC before exec, so they are turned off.
# gRPC reads the setting once, when it is first imported: it must be set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from ._main import main  # noqa: E402

__all__ = ["main"]
