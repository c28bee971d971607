"""Fixtures for tests that need a serving router over real nodes and a real control plane."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from _router import Client, RouterThread, bootstrap

from rankshard.cli._local import LocalValkey
from rankshard.shard_map import ControlPlane


@pytest.fixture
def router(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[RouterThread]:
    """A router over the session's nodes (flushed) and a fresh control-plane database."""
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    thread = RouterThread(control_plane_dsn).start()
    yield thread
    thread.stop()


@pytest.fixture
def client(router: RouterThread) -> Iterator[Client]:
    c = Client(router.port)
    yield c
    c.close()


async def _register(dsn: str, addresses: Sequence[str]) -> None:
    async with await ControlPlane.open(dsn) as cp:
        for address in addresses:
            await cp.add_node(address)


def serve(dsn: str, addresses: list[str], extra: Sequence[str] = (), **options: object) -> Iterator[Client]:
    """A client of a router over the nodes at `addresses` (bootstrapped into `dsn`, owning every index slot) and
    the nodes at `extra` (registered after, owning none); `options` are the router's `Settings` fields.
    Everything stops after."""
    asyncio.run(bootstrap(dsn, addresses))
    if extra:
        asyncio.run(_register(dsn, extra))
    thread = RouterThread(dsn, **options).start()
    client = Client(thread.port)
    try:
        yield client
    finally:
        client.close()
        thread.stop()


@pytest.fixture
def split_client(control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey) -> Iterator[Client]:
    """A router over a shared node (n1) and `fresh_valkey` (n2), which the test may stop, kill or pause."""
    yield from serve(control_plane_dsn, [node_addresses[0], fresh_valkey.address])
