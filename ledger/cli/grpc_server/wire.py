"""Checks of the bytes a client sent: unknown fields are refused, by number.

The ledger's messages are the platform's, field for field (``protos/``). A field
the ledger does not know would otherwise be kept as an unknown field and stored,
or silently dropped; neither is honest, so any call whose request holds one is
refused with ``INVALID_ARGUMENT`` naming where it is and its number, and nothing
is written. Two numbers get their own message: ``AgentExecutionStatus`` field 10
and ``WorkflowExecutionStatus`` field 11 held the platform's old
``callback_token``, which the ledger takes in the spec only.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ledger.contract.errors import InvalidResourceError

OLD_CALLBACK_TOKEN_FIELDS = {
    "ledger.api.agentexecution.v1.AgentExecutionStatus": 10,
    "ledger.api.workflowexecution.v1.WorkflowExecutionStatus": 11,
}
"""Status fields that once held the callback token (reserved in ``protos/``)."""


def check_known_fields(message: Message, path: str = "") -> None:
    """Raises :class:`InvalidResourceError` for the first unknown field in ``message``
    or any message inside it (``path`` names where ``message`` is)."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        number = unknown[0].field_number
        where = path or message.DESCRIPTOR.name
        old = OLD_CALLBACK_TOKEN_FIELDS.get(message.DESCRIPTOR.full_name)
        if old is not None and any(unknown[i].field_number == old for i in range(len(unknown))):
            raise InvalidResourceError(
                f"{where}: field {old} (the platform's old status.callback_token) is not "
                "accepted: a callback token is an input, given once in spec.callback_token "
                "at create; nothing was written",
                field=f"{where}.{old}",
            )
        raise InvalidResourceError(
            f"{where}: unknown field number {number} ({message.DESCRIPTOR.full_name} has "
            "no such field); nothing was written",
            field=f"{where}.{number}",
        )
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = f"{path}.{field.name}" if path else field.name
        entry = field.message_type
        assert entry is not None
        if entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    check_known_fields(item, f"{name}[{key!r}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                check_known_fields(item, f"{name}[{index}]")
        else:
            check_known_fields(value, name)
