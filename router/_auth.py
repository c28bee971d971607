"""Bearer tokens with roles, and per-token rate limits (docs/api.md, Auth; docs/operations.md, Tokens and TLS).

A call names its token in the metadata ``authorization: Bearer TOKEN``. Role ``game`` may call
``rankshard.v1.Leaderboard``; role ``admin`` may call every service. The check runs in the server's lookup of a
call's handler (`GuardedService.service`), before the request is even decoded: a refused call never reaches a
handler, so it changes nothing stored.

The tokens file (``--tokens PATH``) is a JSON object from role to tokens::

    {"admin": "TOKEN", "game": "TOKEN"}                     # what `rankshard cluster up --auth` writes
    {"admin": ["A1", "A2"],                                 # several tokens per role (say, while rotating)
     "game": [{"token": "G1", "rate": 500, "burst": 1000},  # a token bucket: calls per second, and burst
              "G2"]}                                        # no rate: no limit

Tokens are found by their SHA-256 digest in a dict. Hashing first makes the lookup constant-time in what is
secret: the dict compares digests, and a caller who learns how much of a digest matched learns nothing of a
token. It also costs one hash per call whatever the number of tokens (a `hmac.compare_digest` loop would cost
one comparison per token).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ADMIN = "admin"
GAME = "game"
ROLES = (ADMIN, GAME)
Clock = Callable[[], float]


class TokensError(ValueError):
    """The tokens file cannot be read or is not of the documented form; the message says where and why."""


@dataclass(slots=True)
class Bucket:
    """A token bucket: `rate` calls a second on average, `burst` at once. `take` spends one call if it can."""

    rate: float
    burst: int
    level: float = field(init=False)
    last: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        self.level = float(self.burst)

    def take(self, now: float) -> bool:
        self.level = min(float(self.burst), self.level + (now - self.last) * self.rate)
        self.last = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token may do: its role, and its bucket when it is rate limited."""

    role: str
    bucket: Bucket | None = None


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class Tokens:
    """The tokens a router accepts. `clock` (seconds, monotonic) drives the rate limits."""

    def __init__(self, grants: Mapping[str, Grant], clock: Clock = time.monotonic) -> None:
        self._grants = {_digest(token): grant for token, grant in grants.items()}
        self._clock = clock

    @classmethod
    def load(cls, path: Path, clock: Clock = time.monotonic) -> Tokens:
        """The tokens of the file at `path`; raises `TokensError` naming the file and what is wrong."""
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TokensError(f"tokens file {path}: {exc}") from None
        try:
            return cls(parse_grants(document), clock)
        except TokensError as exc:
            raise TokensError(f"tokens file {path}: {exc}") from None

    def refusal(self, metadata: Sequence[tuple[str, str | bytes]] | None, admin_only: bool) -> Refusal | None:
        """Why a call with `metadata` to a service needing `admin_only` (else any role) is refused, or None."""
        token = _bearer(metadata)
        if token is None:
            return MISSING
        grant = self._grants.get(_digest(token))
        if grant is None:
            return UNKNOWN
        if admin_only and grant.role != ADMIN:
            return FORBIDDEN
        if grant.bucket is not None and not grant.bucket.take(self._clock()):
            return EXHAUSTED
        return None


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization`` entry, if it is ``Bearer TOKEN`` (the scheme in any case)."""
    for key, value in metadata or ():
        if key == "authorization":
            # gRPC hands text metadata (any key not ending in -bin) over as str.
            scheme, _, token = str(value).partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


def parse_grants(document: Any) -> dict[str, Grant]:
    """The grants of a tokens file's JSON `document` (see the module docstring); raises `TokensError`."""
    if not isinstance(document, dict) or not document:
        raise TokensError('must be a JSON object such as {"admin": "TOKEN", "game": "TOKEN"}')
    grants: dict[str, Grant] = {}
    for role, entries in document.items():
        if role not in ROLES:
            raise TokensError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            token, grant = _entry(role, entry, f"{role}[{i}]")
            if token in grants:
                raise TokensError(f"{role}[{i}]: the same token is listed twice")
            grants[token] = grant
    return grants


def _entry(role: str, entry: Any, where: str) -> tuple[str, Grant]:
    if isinstance(entry, str):
        entry = {"token": entry}
    if not isinstance(entry, dict) or set(entry) - {"token", "rate", "burst"}:
        raise TokensError(f'{where}: must be a token or {{"token": ..., "rate": ..., "burst": ...}}')
    token = entry.get("token")
    if not isinstance(token, str) or not token.strip() or token != token.strip() or " " in token:
        raise TokensError(f"{where}: a token must be a non-empty string without spaces")
    rate, burst = entry.get("rate"), entry.get("burst")
    if rate is None:
        if burst is not None:
            raise TokensError(f"{where}: a burst needs a rate")
        return token, Grant(role)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        raise TokensError(f"{where}: rate must be a positive number of calls per second, not {rate!r}")
    if burst is None:
        burst = max(1, math.ceil(rate))
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise TokensError(f"{where}: burst must be a positive integer, not {burst!r}")
    return token, Grant(role, Bucket(float(rate), burst))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused call's status, and the handler that answers with it (built once: refusals cost no set-up)."""

    code: grpc.StatusCode
    details: str
    handler: grpc.RpcMethodHandler = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(self.code, self.details)

        # No deserializer: a refused request is never decoded.
        object.__setattr__(self, "handler", grpc.unary_unary_rpc_method_handler(refuse))


MISSING = Refusal(grpc.StatusCode.UNAUTHENTICATED, "no token: send the metadata `authorization: Bearer TOKEN`")
UNKNOWN = Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
FORBIDDEN = Refusal(
    grpc.StatusCode.PERMISSION_DENIED, "this token's role (game) may call only rankshard.v1.Leaderboard"
)
EXHAUSTED = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "this token is over its rate limit; retry with backoff")


class GuardedService(grpc.GenericRpcHandler):
    """One service's method handlers (by full method path), each served only to a call whose token `tokens`
    accepts for it: any role, or with `admin_only` the admin role."""

    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler], tokens: Tokens, admin_only: bool) -> None:
        self._handlers = dict(handlers)
        self._tokens = tokens
        self._admin_only = admin_only

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is None:
            return None  # another service's call (health, reflection): not ours to check
        refusal = self._tokens.refusal(handler_call_details.invocation_metadata, self._admin_only)
        return handler if refusal is None else refusal.handler
