"""`rankshard nodes add` and `nodes remove`, through the real CLI against real PostgreSQL and Valkey."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from _router import bootstrap
from click.testing import CliRunner, Result

from rankshard.cli import main
from rankshard.cli._local import LocalValkey, free_port
from rankshard.shard_map import ControlPlane, SlotTable


@pytest.fixture
def cluster_dsn(control_plane_dsn: str, node_addresses: list[str]) -> str:
    """A control plane with the session's two nodes registered as n1 and n2, owning every index slot."""
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    return control_plane_dsn


def _invoke(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--control-plane", dsn, *args])


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _addresses(dsn: str) -> list[str]:
    result = _invoke(dsn, "nodes", "list", "--json")
    assert result.exit_code == 0, result.output
    return [n["address"] for n in json.loads(result.stdout)]


def test_add_refuses_a_node_that_does_not_answer(cluster_dsn: str, node_addresses: list[str]) -> None:
    line = _one_error_line(_invoke(cluster_dsn, "nodes", "add", f"127.0.0.1:{free_port()}"))
    assert "does not answer" in line and "nothing was registered" in line
    assert _addresses(cluster_dsn) == node_addresses
    created = _invoke(cluster_dsn, "leaderboards", "create", "weekly", "--boundaries", "100")
    assert created.exit_code == 0, created.output  # no dead node to place shards on


def test_add_refuses_a_node_holding_keys_that_are_not_rankshards(
    cluster_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    with redis.Redis(host="127.0.0.1", port=int(fresh_valkey.address.rsplit(":", 1)[1])) as r:
        r.set("session:42", "x")
    line = _one_error_line(_invoke(cluster_dsn, "nodes", "add", fresh_valkey.address))
    assert "not rankshard's" in line and "'session:42'" in line
    assert _addresses(cluster_dsn) == node_addresses


def test_add_takes_an_empty_or_rankshard_node_and_remove_takes_it_back(
    cluster_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    address = fresh_valkey.address
    added = _invoke(cluster_dsn, "nodes", "add", address)
    assert added.exit_code == 0, added.output
    assert added.stdout == f"registered node n3 at {address}\n"
    assert "already registered as n3" in _one_error_line(_invoke(cluster_dsn, "nodes", "add", address))

    removed = _invoke(cluster_dsn, "nodes", "remove", "n3")
    assert removed.exit_code == 0, removed.output
    assert removed.stdout == f"removed node n3 at {address}\n"
    assert _addresses(cluster_dsn) == node_addresses

    with redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1])) as r:
        r.set("rs:d:old/s1", "left by an earlier cluster")
    assert _invoke(cluster_dsn, "nodes", "add", address).stdout == f"registered node n4 at {address}\n"
    fresh_valkey.stop()  # a node lost for good can still be removed: removal never contacts it
    assert _invoke(cluster_dsn, "nodes", "remove", address).stdout == f"removed node n4 at {address}\n"
    assert _addresses(cluster_dsn) == node_addresses


def test_remove_refuses_a_node_that_owns_slots_or_shards(cluster_dsn: str, node_addresses: list[str]) -> None:
    line = _one_error_line(_invoke(cluster_dsn, "nodes", "remove", "n1"))
    assert "node n1 owns 512 index slot(s);" in line and "shard(s)" not in line

    assert _invoke(cluster_dsn, "leaderboards", "create", "weekly", "--boundaries", "100,200").exit_code == 0
    line = _one_error_line(_invoke(cluster_dsn, "nodes", "remove", node_addresses[0]))
    assert "node n1 owns 2 shard(s) (weekly/s1, weekly/s2) and 512 index slot(s)" in line
    assert "nothing was removed" in line

    assert "node 'n9' not found" in _one_error_line(_invoke(cluster_dsn, "nodes", "remove", "n9"))
    assert _addresses(cluster_dsn) == node_addresses


def _dealt(dsn: str) -> SlotTable | None:
    async def read() -> SlotTable | None:
        async with await ControlPlane.open(dsn) as cp:
            return await cp.slot_table()

    return asyncio.run(read())


def test_deal_slots_deals_them_once_over_the_nodes_registered_then(
    control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    assert _invoke(control_plane_dsn, "init").exit_code == 0
    for address in node_addresses:
        assert _invoke(control_plane_dsn, "nodes", "add", address).exit_code == 0
    dealt = _invoke(control_plane_dsn, "nodes", "deal-slots")
    assert dealt.exit_code == 0, dealt.output
    assert dealt.stdout == "dealt the 1024 index slots: n1 512, n2 512\n"
    assert _dealt(control_plane_dsn) == SlotTable.spread(["n1", "n2"])

    # Moving slots would strand the member indexes they hold: a node added later gets none.
    assert _invoke(control_plane_dsn, "nodes", "add", fresh_valkey.address).exit_code == 0
    again = _invoke(control_plane_dsn, "nodes", "deal-slots")
    assert again.exit_code == 0, again.output
    assert again.stdout == "the 1024 index slots were dealt already; they stay: n1 512, n2 512\n"
    assert _dealt(control_plane_dsn) == SlotTable.spread(["n1", "n2"])


def test_deal_slots_without_a_registered_node_deals_nothing(control_plane_dsn: str) -> None:
    assert _invoke(control_plane_dsn, "init").exit_code == 0
    line = _one_error_line(_invoke(control_plane_dsn, "nodes", "deal-slots"))
    assert line == "rankshard: no node is registered to own the index slots; run `rankshard nodes add`"
    assert _dealt(control_plane_dsn) is None


def test_add_takes_a_host_name(cluster_dsn: str, fresh_valkey: LocalValkey) -> None:
    # Containers name their nodes by host name (compose.sharded.yml: valkey1:6379).
    address = f"localhost:{fresh_valkey.address.rsplit(':', 1)[1]}"
    added = _invoke(cluster_dsn, "nodes", "add", address)
    assert added.stdout == f"registered node n3 at {address}\n", added.output
    created = _invoke(cluster_dsn, "leaderboards", "create", "weekly", "--boundaries", "100,200")
    assert created.exit_code == 0, created.output
    shards = json.loads(_invoke(cluster_dsn, "shards", "list", "-l", "weekly", "--json").stdout)
    assert "n3" in {s["node"] for s in shards}
