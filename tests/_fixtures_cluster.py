"""Fixtures for tests that need a serving router over real nodes and a real control plane."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from _router import Client, RouterThread, bootstrap


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
