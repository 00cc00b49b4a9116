"""Bearer-token authentication of ``ledger serve``, from a file of hashed tokens.

The tokens file (``ledger serve --tokens FILE``) has one line per token::

    # name role hash
    runner-1 writer sha256:5f2b...e1
    dashboard reader sha256:09aa...7c

A token is 32 random bytes (``ledger token add`` prints it once, as
``ldg_<base64url>``); the file stores only its SHA-256 (a token has 256 bits of
entropy, so a fast hash is enough: nothing can be guessed from it). A call sends
``authorization: Bearer <token>``. Readers may call the query services and
reflection; writers may call everything. The health service needs no token (probes
carry none). No token, or one not in the file: ``UNAUTHENTICATED``; a reader
token on a command: ``PERMISSION_DENIED``. The file is read when the server
starts.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from ledger.contract.errors import ConfigurationError

TOKEN_PREFIX = "ldg_"  # noqa: S105 - a prefix, not a password
HEALTH_PREFIX = "/grpc.health.v1.Health/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class Role(enum.Enum):
    """What a token may do."""

    READER = "reader"
    WRITER = "writer"


@dataclass(frozen=True)
class TokenEntry:
    """One line of the tokens file."""

    name: str
    role: Role
    digest: str
    """``sha256:<hex>`` of the token."""


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_tokens(path: Path) -> list[TokenEntry]:
    """The entries of a tokens file; a malformed line raises :class:`ConfigurationError`
    naming its number (never its content beyond the name)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigurationError(f"cannot read the tokens file {str(path)!r}: {e}") from e
    entries: list[TokenEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or not _NAME.match(fields[0]) or not _HASH.match(fields[2]):
            raise ConfigurationError(
                f"{path}: line {number} is not '<name> <reader|writer> sha256:<hex>'"
            )
        try:
            role = Role(fields[1])
        except ValueError:
            raise ConfigurationError(
                f"{path}: line {number}: role {fields[1]!r} is not reader or writer"
            ) from None
        entries.append(TokenEntry(fields[0], role, fields[2]))
    return entries


def add_token(path: Path, name: str, role: Role) -> str:
    """Adds a new token named ``name`` to the file (created, mode 0600, when missing)
    and returns it: the only time it is ever seen. A name already there is refused."""
    if not _NAME.match(name):
        raise ConfigurationError(
            f"token name {name!r}: 1 to 63 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit"
        )
    entries = read_tokens(path)
    if any(entry.name == name for entry in entries):
        raise ConfigurationError(f"{path} already has a token named {name!r}")
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    line = f"{name} {role.value} {hash_token(token)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as file:
        if not entries and file.tell() == 0:
            file.write("# ledger serve tokens: name role sha256 (see `ledger token add`)\n")
        file.write(line)
    return token


class Authenticator:
    """Who a call's metadata says the caller is, from the tokens file's entries."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._by_digest = {entry.digest: entry for entry in entries}

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> TokenEntry | None:
        """The entry of the call's bearer token, or None (no token, or an unknown one)."""
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            digest = hash_token(token.strip())
            entry = self._by_digest.get(digest)
            # A constant-time comparison, for form's sake: the lookup is by hash.
            if entry is not None and hmac.compare_digest(entry.digest, digest):
                return entry
            return None
        return None


def needs_writer(method: str) -> bool:
    """Whether ``method`` (``/package.Service/name``) changes the ledger."""
    service = method.rsplit("/", 2)[-2] if method.count("/") >= 2 else ""
    return service.endswith("CommandController")


class AuthInterceptor(aio.ServerInterceptor):
    """Refuses a call without a valid token (``UNAUTHENTICATED``), and a reader's call
    to a command service (``PERMISSION_DENIED``), before its request is decoded."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        entry = self._authenticator.identify(handler_call_details.invocation_metadata)
        if entry is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid bearer token is required (metadata 'authorization: Bearer <token>')",
            )
        if entry.role is not Role.WRITER and needs_writer(method):
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {entry.name!r} is a reader: commands need a writer token",
            )
        return handler


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that refuses every call (the request
    is never decoded: no deserializer)."""

    async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
