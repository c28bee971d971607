"""The CLI's gRPC channel to a router: TLS with the local cluster's CA when its routers serve TLS, and a bearer
token (`Settings.token`, else the local cluster's admin token) on every call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import grpc

from rankshard.shard_map import Settings

from ._secrets import TlsFiles, admin_token
from ._settings import LocalSettings

_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class RouterAccess:
    """Where a router is, the CA to trust (None: plaintext) and the token to send (None: none)."""

    address: str
    ca: bytes | None = None
    token: str | None = None

    @classmethod
    def of(cls, settings: Settings, address: str | None = None) -> RouterAccess:
        """The local cluster's router in `settings.data_dir` (or `address`), with its CA when it serves TLS,
        and `settings.token`, else its admin token when it requires tokens.

        Raises `click.ClickException` when there is no address to use or a file of the data dir is unreadable.
        """
        local = LocalSettings.load(settings.data_dir)
        if address is None and local is None:
            raise click.ClickException(
                f"no router: pass --router HOST:PORT, or start a local cluster with "
                f"`rankshard --data-dir {settings.data_dir} cluster up`"
            )
        try:
            return cls(
                address or f"{_HOST}:{local.router_port}",  # type: ignore[union-attr]  # one of the two, above
                TlsFiles.of(settings.data_dir).ca.read_bytes() if local is not None and local.tls else None,
                settings.token or (admin_token(settings.data_dir) if local is not None and local.auth else None),
            )
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read the local cluster's TLS or token files: {exc}") from None

    def channel(self) -> grpc.aio.Channel:
        """A new channel to the router (the caller closes it); every call on it carries the token."""
        interceptors = [_Bearer(self.token)] if self.token else None
        if self.ca is None:
            return grpc.aio.insecure_channel(self.address, interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.aio.secure_channel(self.address, credentials, interceptors=interceptors)


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to each call. Metadata, not call credentials: gRPC sends call
    credentials over TLS only, and a local cluster may serve plaintext with tokens."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._entry)
        with_token = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(with_token, request)
