"""The rules a resource must follow to be recorded, and the ledger's size limits.

Each broken rule raises its own :mod:`ledger.errors` type, naming the execution
and the field, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import ListValue, Struct, Value

from ledger.contract.errors import (
    CallbackTokenTooLargeError,
    InvalidResourceError,
    LimitExceededError,
    MissingFieldError,
    UnknownKindError,
)
from ledger.contract.kinds import AGENT_EXECUTION, API_VERSION, MAX_CALLBACK_TOKEN_BYTES, Kind

MAX_SPEC_BYTES = 256 * 1024
"""A spec (runtime_env, message and token included) is at most 256 KiB on the wire."""
MAX_STATUS_PATCH_BYTES = 1024 * 1024
"""One status patch is at most 1 MiB on the wire."""
MAX_OUTCOME_BYTES = 1024 * 1024
"""Output or error details of a completion: at most 1 MiB as JSON."""
MAX_LABELS = 64
"""Labels, annotations and tags: at most 64 entries each."""
MAX_STRUCT_DEPTH = 32
"""google.protobuf.Struct values nest at most 32 levels deep."""
MAX_TEXT_CHARS = 4096
"""Error types, cancellation reasons and actor names: at most 4096 characters."""
MAX_METADATA_BYTES = 64 * 1024
"""Metadata (name, labels, annotations, tags...) is at most 64 KiB on the wire."""
MAX_JSON_NODES = 200_000
"""Output and error details hold at most 200,000 values (a guard against bombs)."""


def check_envelope(kind: Kind, api_version: str, kind_name: str, *, execution_id: str) -> None:
    """``api_version`` and ``kind`` must be the ledger's (empty means "of this class")."""
    if api_version and api_version != API_VERSION:
        raise UnknownKindError(
            f"{about(execution_id)}unknown api_version {api_version!r}, expected {API_VERSION!r}",
            execution_id=execution_id,
            field="api_version",
        )
    if kind_name and kind_name != kind.name:
        raise UnknownKindError(
            f"{about(execution_id)}kind {kind_name!r} does not match the "
            f"{kind.name} message it was sent in",
            execution_id=execution_id,
            field="kind",
        )


def check_spec(kind: Kind, spec: Message, *, execution_id: str) -> None:
    """The spec rules of ``kind``: required fields, token size, spec size, Struct depth."""
    values: Any = spec
    if kind is AGENT_EXECUTION:
        if not values.agent_id and not values.session_id:
            raise MissingFieldError(
                f"{about(execution_id)}an AgentExecution needs spec.agent_id or "
                "spec.session_id (both are empty)",
                execution_id=execution_id,
                field="spec.agent_id",
            )
        if not values.message:
            raise MissingFieldError(
                f"{about(execution_id)}an AgentExecution needs spec.message "
                "(the input the agent runs on)",
                execution_id=execution_id,
                field="spec.message",
            )
    elif not values.workflow_id and not values.workflow_instance_id:
        raise MissingFieldError(
            f"{about(execution_id)}a WorkflowExecution needs spec.workflow_id or "
            "spec.workflow_instance_id (both are empty)",
            execution_id=execution_id,
            field="spec.workflow_id",
        )
    token_size = len(values.callback_token)
    if token_size > MAX_CALLBACK_TOKEN_BYTES:
        raise CallbackTokenTooLargeError(
            f"{about(execution_id)}spec.callback_token is {token_size} bytes, "
            f"at most {MAX_CALLBACK_TOKEN_BYTES} are accepted",
            execution_id=execution_id,
            field="spec.callback_token",
        )
    for key in values.runtime_env:
        if not key:
            raise InvalidResourceError(
                f"{about(execution_id)}spec.runtime_env has an empty key",
                execution_id=execution_id,
                field="spec.runtime_env",
            )
    check_size(spec, MAX_SPEC_BYTES, execution_id=execution_id, field="spec")
    check_structs(spec, execution_id=execution_id, field="spec")


def check_metadata_counts(metadata: Message, *, execution_id: str) -> None:
    """Labels, annotations and tags counts, and the metadata's total size."""
    check_size(metadata, MAX_METADATA_BYTES, execution_id=execution_id, field="metadata")
    values: Any = metadata
    for name in ("labels", "annotations", "tags"):
        count = len(getattr(values, name))
        if count > MAX_LABELS:
            raise LimitExceededError(
                f"{about(execution_id)}metadata.{name} has {count} entries, "
                f"at most {MAX_LABELS} are accepted",
                execution_id=execution_id,
                field=f"metadata.{name}",
            )


def check_size(message: Message, limit: int, *, execution_id: str, field: str) -> None:
    size = message.ByteSize()
    if size > limit:
        raise LimitExceededError(
            f"{about(execution_id)}{field} is {size} bytes, at most {limit} are accepted",
            execution_id=execution_id,
            field=field,
        )


def check_utf8(value: str, *, execution_id: str, field: str) -> None:
    """Text must be encodable as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidResourceError(
            f"{about(execution_id)}{field} is not valid Unicode text ({e.reason} "
            f"at position {e.start})",
            execution_id=execution_id,
            field=field,
        ) from None


def check_text(value: str, *, execution_id: str, field: str) -> None:
    check_utf8(value, execution_id=execution_id, field=field)
    if len(value) > MAX_TEXT_CHARS:
        raise LimitExceededError(
            f"{about(execution_id)}{field} is {len(value)} characters, "
            f"at most {MAX_TEXT_CHARS} are accepted",
            execution_id=execution_id,
            field=field,
        )


def check_structs(message: Message, *, execution_id: str, field: str) -> None:
    """Every Struct inside ``message`` nests at most :data:`MAX_STRUCT_DEPTH` levels."""
    for depth_field, depth in _struct_depths(message, field):
        if depth > MAX_STRUCT_DEPTH:
            raise LimitExceededError(
                f"{about(execution_id)}{depth_field} nests {depth} levels deep, "
                f"at most {MAX_STRUCT_DEPTH} are accepted",
                execution_id=execution_id,
                field=depth_field,
            )


def _struct_depths(message: Message, path: str) -> Iterable[tuple[str, int]]:
    if isinstance(message, (Struct, ListValue, Value)):
        yield path, _depth(message)
        return
    holders = _struct_holders(message.DESCRIPTOR)
    if not holders:
        return
    for fd, value in message.ListFields():
        if fd.name not in holders:
            continue
        sub = f"{path}.{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from _struct_depths(item, f"{sub}[{key!r}]")
        elif fd.is_repeated:
            for index, item in enumerate(value):
                yield from _struct_depths(item, f"{sub}[{index}]")
        else:
            yield from _struct_depths(value, sub)


_STRUCT_TYPES = frozenset(
    d.full_name for d in (Struct.DESCRIPTOR, ListValue.DESCRIPTOR, Value.DESCRIPTOR)
)
_holders: dict[str, frozenset[str]] = {}


def _struct_holders(descriptor: Any) -> frozenset[str]:
    """The names of the message fields of ``descriptor`` through which a Struct can be
    reached (map values and repeated entries included), computed once per type."""
    found = _holders.get(descriptor.full_name)
    if found is None:
        found = _holders[descriptor.full_name] = frozenset(
            fd.name
            for fd in descriptor.fields
            if fd.type == FieldDescriptor.TYPE_MESSAGE
            and fd.message_type is not None
            and _reaches_struct(fd.message_type, set())
        )
    return found


def _reaches_struct(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in _STRUCT_TYPES:
        return True
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    return any(
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.message_type is not None
        and _reaches_struct(fd.message_type, seen)
        for fd in descriptor.fields
    )


def _depth(value: Struct | ListValue | Value) -> int:
    """Nesting depth, computed iteratively so a hostile value cannot blow the stack."""
    deepest = 0
    stack: list[tuple[Message, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Struct):
            depth += 1
            stack.extend((v, depth) for v in item.fields.values())
        elif isinstance(item, ListValue):
            depth += 1
            stack.extend((v, depth) for v in item.values)
        elif isinstance(item, Value):
            kind = item.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((item.struct_value, depth))
            elif kind == "list_value":
                stack.append((item.list_value, depth))
        deepest = max(deepest, depth)
    return deepest


def json_depth(value: object, *, limit: int = MAX_STRUCT_DEPTH) -> int:
    """Nesting depth of a JSON-like value (dicts and lists), computed iteratively.

    Stops as soon as the depth passes ``limit`` (so a cycle ends the walk) and
    raises ``ValueError`` past :data:`MAX_JSON_NODES` values (shared-reference bombs).
    """
    deepest = 0
    nodes = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES:
            msg = f"more than {MAX_JSON_NODES} values"
            raise ValueError(msg)
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > limit:
            return deepest
        stack.extend((v, depth + 1) for v in children)
    return deepest


def about(execution_id: str) -> str:
    """How an error message names the execution: by its id when the caller gave one
    (never by an id the ledger made up for a create it then refused)."""
    return f"execution {execution_id!r}: " if execution_id else "the new execution: "
