"""TLS through a real router: clients that trust its CA are served, others are not; under mutual TLS a client
without a certificate its client CA signed is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from _router import Client, RouterThread, bootstrap

from rankshard.cli._secrets import make_certificate
from rankshard.router import SecurityError
from rankshard.router._security import Security
from rankshard.shard_map import Settings
from rankshard.v1 import leaderboard_pb2 as pb


@dataclass(frozen=True)
class Pki:
    """A server certificate for 127.0.0.1, a client certificate, and another CA's client certificate."""

    folder: Path
    server_ca: bytes
    client_cert: bytes
    client_key: bytes
    stranger_ca: bytes
    stranger_cert: bytes
    stranger_key: bytes

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def client_ca(self) -> Path:
        return self.folder / "client-ca.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, cert, key = make_certificate(("localhost",), ("127.0.0.1",))
    client_ca, client_cert, client_key = make_certificate(("game-backend",), (), client=True)
    stranger_ca, stranger_cert, stranger_key = make_certificate(("stranger",), (), client=True)
    (folder / "server.pem").write_bytes(cert)
    (folder / "server-key.pem").write_bytes(key)
    (folder / "client-ca.pem").write_bytes(client_ca)
    return Pki(folder, server_ca, client_cert, client_key, stranger_ca, stranger_cert, stranger_key)


def _serve(dsn: str, addresses: list[str], **options: object) -> Iterator[int]:
    asyncio.run(bootstrap(dsn, addresses))
    router = RouterThread(dsn, **options).start()
    yield router.port
    router.stop()


@pytest.fixture
def tls_port(control_plane_dsn: str, node_addresses: list[str], pki: Pki) -> Iterator[int]:
    yield from _serve(control_plane_dsn, node_addresses, tls_cert=pki.cert, tls_key=pki.key)


@pytest.fixture
def mtls_port(control_plane_dsn: str, node_addresses: list[str], pki: Pki) -> Iterator[int]:
    yield from _serve(
        control_plane_dsn, node_addresses, tls_cert=pki.cert, tls_key=pki.key, tls_client_ca=pki.client_ca
    )


def _status(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """How a client with `credentials` (None: plaintext) fares: it creates a board and scores on it."""
    client = Client(port, credentials)
    try:
        client.create("tls")
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="tls", user_id="u", score=3), timeout=10)
        reply = client.lb.GetRank(pb.GetRankRequest(leaderboard="tls", user_id="u"), timeout=10)
        assert reply.entry.score == 3
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]  # grpc's stubs leave code() untyped
    finally:
        client.close()
    return grpc.StatusCode.OK


def test_tls_serves_clients_that_trust_its_ca_and_no_others(tls_port: int, pki: Pki) -> None:
    assert _status(tls_port, None) == grpc.StatusCode.UNAVAILABLE
    assert _status(tls_port, grpc.ssl_channel_credentials(pki.stranger_ca)) == grpc.StatusCode.UNAVAILABLE
    assert _status(tls_port, grpc.ssl_channel_credentials(pki.server_ca)) == grpc.StatusCode.OK


def test_mutual_tls_refuses_a_client_without_a_certificate_its_client_ca_signed(mtls_port: int, pki: Pki) -> None:
    no_cert = grpc.ssl_channel_credentials(pki.server_ca)
    assert _status(mtls_port, no_cert) == grpc.StatusCode.UNAVAILABLE
    stranger = grpc.ssl_channel_credentials(pki.server_ca, pki.stranger_key, pki.stranger_cert)
    assert _status(mtls_port, stranger) == grpc.StatusCode.UNAVAILABLE
    signed = grpc.ssl_channel_credentials(pki.server_ca, pki.client_key, pki.client_cert)
    assert _status(mtls_port, signed) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"tls_cert": "server.pem"}, "tls_cert and tls_key go together"),
        ({"tls_key": "server-key.pem"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "client-ca.pem"}, "tls_client_ca needs tls_cert and tls_key"),
        ({"tls_cert": "server.pem", "tls_key": "missing.pem"}, "tls_key {folder}/missing.pem: No such file"),
        ({"tls_cert": "server.pem", "tls_key": "not-pem.txt"}, "tls_key {folder}/not-pem.txt: not a PEM file"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused_naming_the_setting(
    pki: Pki, given: dict[str, str], problem: str
) -> None:
    (pki.folder / "not-pem.txt").write_text("hello\n")
    with pytest.raises(SecurityError, match="^" + problem.format(folder=pki.folder)):
        Security.of(Settings(**{k: pki.folder / v for k, v in given.items()}))  # type: ignore[arg-type]  # Settings checks its fields
