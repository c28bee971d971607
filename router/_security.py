"""What a router asks of its callers: TLS (optionally mutual) and bearer tokens, from its settings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from rankshard.shard_map import Settings

from ._auth import Clock, Tokens, TokensError


class SecurityError(ValueError):
    """The TLS or token settings cannot be used: a file is missing or malformed, or a setting lacks its pair."""


@dataclass(frozen=True, slots=True)
class Security:
    """The tokens the router accepts (None: it serves every caller) and its TLS credentials (None: plaintext)."""

    tokens: Tokens | None = None
    credentials: grpc.ServerCredentials | None = None

    @classmethod
    def of(cls, settings: Settings, clock: Clock = time.monotonic) -> Security:
        """From `settings.tokens` and `settings.tls_*`; `clock` drives the tokens' rate limits.

        Raises `SecurityError` saying which setting or file is wrong.
        """
        try:
            tokens = Tokens.load(settings.tokens, clock) if settings.tokens is not None else None
        except TokensError as exc:
            raise SecurityError(str(exc)) from None
        return cls(tokens, _credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca))


def _credentials(cert: Path | None, key: Path | None, client_ca: Path | None) -> grpc.ServerCredentials | None:
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise SecurityError("tls_cert and tls_key go together: set both, or neither for plaintext")
    return grpc.ssl_server_credentials(
        [(_pem(key, "tls_key"), _pem(cert, "tls_cert"))],
        root_certificates=_pem(client_ca, "tls_client_ca") if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )


def _pem(path: Path, setting: str) -> bytes:
    """The file's bytes; gRPC checks them as PEM only when the port opens, so the marker is checked here."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{setting} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{setting} {path}: not a PEM file")
    return data
