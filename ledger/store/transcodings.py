"""Transcodings that let the library's JSON transcoder store our event payloads.

The library's ``JSONTranscoder`` has no transcoding for ``bytes`` or for
protobuf messages. This module adds both:

- ``bytes`` are stored as ``{"_type_": "bytes_b64", "_data_": "<base64>"}``.
- a protobuf message is stored as
  ``{"_type_": "pb:<full message name>", "_data_": "<base64 of its wire bytes>"}``,
  e.g. ``pb:ledger.api.agentexecution.v1.AgentExecutionSpec``. The wire bytes are
  the compact binary encoding, the full name carries the contract's version
  (``v1``), and anyone with the ``.proto`` files can decode them, with or
  without this code.
"""

from __future__ import annotations

import base64
import binascii

from eventsourcing.persistence import JSONTranscoder, Transcoding
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct

from ledger.api.commons.v1 import metadata_pb2
from ledger.contract.kinds import KINDS


class BytesAsBase64(Transcoding):
    """``bytes`` as standard base64 text."""

    type = bytes
    name = "bytes_b64"

    def encode(self, obj: bytes) -> str:
        return base64.b64encode(obj).decode("ascii")

    def decode(self, data: str) -> bytes:
        try:
            return base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            msg = f"stored bytes are not valid base64: {e}"
            raise ValueError(msg) from e


class ProtobufMessageAsBase64(Transcoding):
    """One protobuf message class, as base64 of its deterministic wire bytes."""

    def __init__(self, message_class: type[Message]) -> None:
        self.type = message_class
        self.name = "pb:" + message_class.DESCRIPTOR.full_name

    def encode(self, obj: Message) -> str:
        return base64.b64encode(obj.SerializeToString(deterministic=True)).decode("ascii")

    def decode(self, data: str) -> Message:
        message: Message = self.type()
        try:
            message.ParseFromString(base64.b64decode(data.encode("ascii"), validate=True))
        except (DecodeError, binascii.Error) as e:
            msg = f"stored {self.name} is not a valid message: {e}"
            raise ValueError(msg) from e
        return message


def message_classes() -> list[type[Message]]:
    """Every message class that appears inside a ledger event."""
    classes: list[type[Message]] = [metadata_pb2.ApiResourceMetadata, Struct]
    for kind in KINDS.values():
        classes += [kind.resource_class, kind.spec_class, kind.status_class]
    return classes


def register_ledger_transcodings(transcoder: JSONTranscoder) -> None:
    """Registers the ``bytes`` and protobuf transcodings with ``transcoder``."""
    transcoder.register(BytesAsBase64())
    for message_class in message_classes():
        transcoder.register(ProtobufMessageAsBase64(message_class))


def ledger_transcoder() -> JSONTranscoder:
    """A JSON transcoder with the library's defaults and the ledger's transcodings."""
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, UUIDAsHex

    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    register_ledger_transcodings(transcoder)
    return transcoder
