"""Status patches: the platform's ``updateStatus`` semantics, made explicit.

A patch is a status message of the execution's kind holding only what changed:

- scalars (strings, enums) overwrite when set (non-empty, non-zero);
- a message field (``output``) replaces the current value when set;
- repeated entries with an id upsert by that id: ``tool_calls`` and
  ``sub_agent_executions`` by ``id``, ``tasks`` by ``task_id``; an entry that
  exists is merged field by field (set scalars overwrite, Structs merge), a new
  one is appended in order;
- ``messages`` append;
- ``todos`` merge by key (an entry replaces the one under the same key);
- ``phase`` is handled by the aggregate's transition rules, ``audit`` belongs to
  the ledger and may not be patched.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ledger.contract.errors import InvalidResourceError
from ledger.contract.kinds import Kind

LEDGER_OWNED_FIELDS = frozenset({"audit"})
"""Status fields only the ledger writes."""


def check_patch(kind: Kind, patch: Message, *, execution_id: str) -> None:
    """Raises :class:`InvalidResourceError` if ``patch`` cannot be applied to ``kind``."""
    if not isinstance(patch, kind.status_class):
        raise InvalidResourceError(
            f"execution {execution_id!r} is a {kind.name}: its status patch must be a "
            f"{kind.status_class.DESCRIPTOR.name}, not {type(patch).__name__}",
            execution_id=execution_id,
            field="status",
        )
    for field, _ in patch.ListFields():
        if field.name in LEDGER_OWNED_FIELDS:
            raise InvalidResourceError(
                f"execution {execution_id!r}: status.{field.name} is written by the ledger "
                "from its own events and cannot be patched",
                execution_id=execution_id,
                field=f"status.{field.name}",
            )
    for name, key in kind.upsert_keys:
        entries = getattr(patch, name)
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            entry_key = getattr(entry, key)
            if not entry_key:
                raise InvalidResourceError(
                    f"execution {execution_id!r}: status.{name}[{index}].{key} is empty; "
                    f"{name} entries upsert by {key}, so each needs one",
                    execution_id=execution_id,
                    field=f"status.{name}[{index}].{key}",
                )
            if entry_key in seen:
                raise InvalidResourceError(
                    f"execution {execution_id!r}: status.{name} has {key} {entry_key!r} "
                    "twice in one patch",
                    execution_id=execution_id,
                    field=f"status.{name}[{index}].{key}",
                )
            seen.add(entry_key)


def apply_patch(kind: Kind, status: Message, patch: Message) -> None:
    """Applies ``patch`` to ``status`` in place (``phase`` included, unchecked)."""
    upsert_keys = dict(kind.upsert_keys)
    for field, value in patch.ListFields():
        name = field.name
        if name in LEDGER_OWNED_FIELDS:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(status, name).MergeFrom(value)
        elif field.is_repeated:
            if name in upsert_keys:
                _upsert(getattr(status, name), value, upsert_keys[name])
            else:
                getattr(status, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(status, name).CopyFrom(value)
        else:
            setattr(status, name, value)


def changes_nothing(kind: Kind, status: Message, patch: Message) -> bool:
    """Whether applying ``patch`` would leave ``status`` as it is (a re-sent update)."""
    if any(len(getattr(patch, name)) for name in kind.append_fields):
        return False  # Appended entries are always new.
    after = type(status)()
    after.CopyFrom(status)
    apply_patch(kind, after, patch)
    return bool(after == status)


def _upsert(current: object, entries: object, key: str) -> None:
    index = {getattr(entry, key): entry for entry in current}  # type: ignore[attr-defined]
    for entry in entries:  # type: ignore[attr-defined]
        existing = index.get(getattr(entry, key))
        if existing is None:
            current.add().CopyFrom(entry)  # type: ignore[attr-defined]
        else:
            existing.MergeFrom(entry)
