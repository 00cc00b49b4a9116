"""What the CLI reads: resource, patch and output documents, and option values.

A document is JSON or YAML (the proto's JSON form for resources and patches),
from a file or stdin (``-``); an option taking an object takes inline JSON or
``@file``. A document is at most :data:`MAX_INPUT_BYTES`, UTF-8, and YAML
aliases are refused (no "billion laughs", no recursive documents). Every
problem is an :class:`InputError`: one ``error:`` line, exit code 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from ledger.contract.errors import LedgerError, UserError
from ledger.contract.kinds import Resource, kind_named
from ledger.contract.phases import Phase

M = TypeVar("M", bound=Message)

MAX_INPUT_BYTES = 16 * 1024 * 1024
"""A document given to the CLI is at most 16 MiB."""


class InputError(UserError):
    """A file or argument of the command line could not be read."""


class DeadlineError(LedgerError):
    """A command that waits gave up at its deadline (``--timeout``)."""


class UsageError(InputError):
    """The command line itself is wrong (an option's value, a missing argument): one
    ``error:`` line, exit code 2, as Click's own usage errors."""


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")
_TOKEN_FIELDS = ("callback_token", "callbackToken")


def check_token_text(document: Any) -> None:
    """A token given as text must be strict base64 (standard or URL-safe, padded or
    not): protobuf's JSON parser would quietly turn other text into other bytes. The
    error never repeats the token (a bearer credential)."""
    spec = document.get("spec") if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        return
    for name in _TOKEN_FIELDS:
        value = spec.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _is_base64(value):
            size = len(value) if isinstance(value, str) else type(value).__name__
            raise InputError(
                f"spec.{name} must be base64 (standard or URL-safe, padded or not), as "
                f"the proto's JSON form has bytes, e.g. callback_token: Q2lRNVpUTTJZ...; "
                f"the value given ({size} characters) is not"
            )


def _is_base64(value: str) -> bool:
    if not _BASE64.fullmatch(value) or len(value.rstrip("=")) % 4 == 1:
        return False
    body = value.rstrip("=")
    padded = body + "=" * (-len(body) % 4)
    alphabet = b"-_" if ("-" in body or "_" in body) else b"+/"
    try:
        raw = base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        return False
    # Canonical only: the unused bits of the last character are zero, so the text is
    # exactly what encoding the bytes gives (plain words are not taken for base64).
    return base64.b64encode(raw, altchars=alphabet).decode("ascii").rstrip("=") == body


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: no "billion laughs", no recursive documents."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def read_document(path: str) -> Any:
    """A JSON or YAML document from a file, or stdin for ``-``."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with Path(path).open("rb") as file:
                raw = file.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {path!r}: {e.strerror or e}") from None
    if len(raw) > MAX_INPUT_BYTES:
        raise InputError(f"{path!r} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path!r} is not UTF-8 text: {e}") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    except RecursionError:
        raise InputError(f"{path!r} nests too deeply") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise InputError(f"{path!r} is neither JSON nor YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(f"{path!r} nests too deeply") from None


def parse_into(message: M, document: Any, what: str) -> M:
    """Fills ``message`` from a document in the proto's JSON form."""
    if not isinstance(document, dict):
        raise InputError(f"{what} must be a JSON/YAML object, not {type(document).__name__}")
    try:
        document = _with_enum_names(document, message.DESCRIPTOR, "")
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    try:
        ParseDict(document, message)
    except ParseError as e:
        raise InputError(f"{what} does not match the contract: {e}") from None
    except (RecursionError, ValueError, TypeError) as e:
        raise InputError(f"{what} could not be read: {e}") from None
    return message


def _with_enum_names(document: dict[str, Any], descriptor: Any, where: str) -> Any:
    """A copy of ``document`` whose enum values are spelled as protobuf's JSON parser
    wants them: ``IN_PROGRESS``, ``in_progress``, ``EXECUTION_IN_PROGRESS`` and ``2``
    all become ``EXECUTION_IN_PROGRESS`` (so files accept what flags accept); an
    unknown value is an :class:`InputError` listing the valid ones."""
    if descriptor.full_name.startswith("google.protobuf."):
        return document  # Struct, Value, Timestamp...: their own JSON forms.
    result = dict(document)
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key) or _by_json_name(descriptor, key)
        if field is None or value is None:
            continue
        path = f"{where}.{key}" if where else key
        result[key] = _field_value(field, value, path)
    return result


def _by_json_name(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    return next((f for f in descriptor.fields if f.json_name == key), None)


def _field_value(field: FieldDescriptor, value: Any, path: str) -> Any:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value_field = message.fields_by_name["value"]
        if not isinstance(value, dict):
            return value
        return {k: _single(value_field, v, f"{path}.{k}") for k, v in value.items()}
    if field.is_repeated and isinstance(value, list):
        return [_single(field, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return _single(field, value, path)


def _single(field: FieldDescriptor, value: Any, path: str) -> Any:
    if field.enum_type is not None and isinstance(value, str | int) and not isinstance(value, bool):
        return enum_name(field.enum_type, value, path)
    if field.message_type is not None and isinstance(value, dict):
        return _with_enum_names(value, field.message_type, path)
    return value


def _short_prefix(enum: EnumDescriptor) -> str:
    """What every value's name starts with (``EXECUTION_``, ``TOOL_CALL_``)."""
    names = [v.name for v in enum.values if v.number != 0]
    prefix = names[0] if names else ""
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("_") + 1]


def enum_name(enum: EnumDescriptor, value: str | int, what: str) -> str | int:
    """The full name of an enum value given by full name, short name (any case, ``-``
    for ``_``) or number (an unknown number is kept as it is); else an
    :class:`InputError` naming the valid values."""
    prefix = _short_prefix(enum)
    if isinstance(value, int) or value.strip().isdigit():
        found = enum.values_by_number.get(int(value))
        # An unknown number is kept: proto3 enums are open (the platform may know it).
        return str(found.name) if found is not None else int(value)
    else:
        name = value.strip().upper().replace("-", "_")
        by_name = {v.name.upper(): v for v in enum.values if v.number != 0}
        for candidate in (name, prefix.upper() + name):
            if candidate in by_name:
                return str(by_name[candidate].name)
    valid = ", ".join(v.name.removeprefix(prefix) for v in enum.values if v.number != 0)
    raise InputError(f"{what}: unknown value {value!r}: expected one of {valid}")


def resource_from(document: Any) -> Resource:
    """The resource of the kind the document names."""
    if not isinstance(document, dict):
        raise InputError("the resource must be a JSON/YAML object")
    kind = kind_named(str(document.get("kind", "")))
    check_token_text(document)
    resource: Resource = parse_into(kind.empty_resource(), document, f"the {kind.name}")
    return resource


def phase(value: str) -> int:
    """A phase's number from its name (``IN_PROGRESS``, ``in_progress``,
    ``EXECUTION_FAILED``) or its number (``2``)."""
    try:
        found = Phase.parse(int(value) if value.strip().isdigit() else value)
        if found is Phase.UNSPECIFIED:
            raise ValueError(value)
        return int(found)
    except (KeyError, ValueError):
        names = ", ".join(p.name for p in Phase if p is not Phase.UNSPECIFIED)
        raise UsageError(f"unknown phase {value!r}: expected one of {names}") from None


def json_object(value: str | None, what: str) -> dict[str, Any] | None:
    """An option's object: inline JSON, or ``@file`` (JSON or YAML)."""
    if value is None:
        return None
    document = read_document(value[1:]) if value.startswith("@") else _loads(value, what)
    if not isinstance(document, dict):
        raise InputError(f"{what} must be a JSON object")
    return document


def _loads(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{what} is not valid JSON: {e}") from None


def iso_datetime(value: str | None, what: str) -> datetime | None:
    """An ISO-8601 time option, or None."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{what} must be an ISO-8601 time, e.g. 2026-11-25T10:00:00+00:00"
        ) from None
