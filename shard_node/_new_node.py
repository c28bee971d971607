"""Whether a Redis-protocol server may join the cluster as a data node (`rankshard nodes add`)."""

from __future__ import annotations

from rankshard.shard_map import NodeError, NodeUnavailable

from ._client import DEFAULT_NODE_TIMEOUT, NodeClient
from ._keys import KEY_PREFIX

_SCAN_COUNT = 1000


async def check_new_node(
    address: str,
    *,
    timeout: float = DEFAULT_NODE_TIMEOUT,  # noqa: ASYNC109 -- the probing client's wait for each command
) -> None:
    """Returns if the server at `address` answers and holds no key but rankshard's (an empty node, or one
    an earlier rankshard cluster used): its keys are never touched.

    Raises `NodeUnavailable` if it does not answer PING within `timeout` seconds (or refuses it), and
    `NodeError` naming a key that is not rankshard's: such a server holds someone else's data.
    """
    async with NodeClient(address, address, timeout=timeout) as node:
        try:
            await node.command("PING")
        except NodeUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, TimeoutError):
                raise NodeUnavailable(address, f"does not answer within {timeout:g} s") from exc
            if isinstance(cause, OSError):
                raise NodeUnavailable(address, f"does not answer ({cause})") from exc
            raise  # it answered, refusing (a password, say): the node's own words say why
        if (key := await _foreign_key(node)) is not None:
            raise NodeError(
                address,
                f"holds keys that are not rankshard's (such as {key!r}); rankshard only "
                f"takes a node that is empty or holds its own keys ({KEY_PREFIX}*)",
            )


async def _foreign_key(node: NodeClient) -> str | None:
    # One pass over the keyspace: rankshard keeps a board in hashes and sorted sets of many members each,
    # so even a node of a large earlier cluster has few enough keys to scan on the way in.
    cursor = 0
    while True:
        cursor, keys = await node.command("SCAN", cursor, "COUNT", _SCAN_COUNT)
        for key in keys:
            if not key.startswith(KEY_PREFIX):
                return str(key)
        if cursor == 0:
            return None
