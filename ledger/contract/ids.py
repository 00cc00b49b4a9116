"""Execution ids: the kind's prefix, a dash, and 1 to 63 of ``a-z0-9_-``."""

from __future__ import annotations

import re

from ledger.contract.errors import InvalidIdError
from ledger.contract.kinds import KINDS, Kind

_ID_BODY = re.compile(r"[0-9a-z][0-9a-z_-]{0,62}")
MAX_ID_LENGTH = 68


def kind_of_id(execution_id: str) -> Kind:
    """The kind an id belongs to, by its prefix; :class:`InvalidIdError` if none."""
    prefix, _, _ = execution_id.partition("-")
    for kind in KINDS.values():
        if kind.id_prefix == prefix:
            return kind
    raise InvalidIdError(
        f"execution id {execution_id[:80]!r} must start with 'aex-' or 'wex-'",
        execution_id=execution_id[:80],
        field="metadata.id",
    )


def check_id(execution_id: str, kind: Kind) -> str:
    """Returns ``execution_id`` if it is well formed for ``kind``.

    An id is the kind's prefix, a dash, and 1 to 63 characters of lowercase
    letters, digits, ``_`` and ``-`` (the body starts with a letter or digit).
    """
    prefix, dash, body = execution_id.partition("-")
    if prefix != kind.id_prefix or not dash:
        raise InvalidIdError(
            f"execution id {execution_id[:80]!r} must start with {kind.id_prefix + '-'!r} "
            f"for {'an' if kind.name[0] in 'AEIOU' else 'a'} {kind.name}",
            execution_id=execution_id[:80],
            field="metadata.id",
        )
    if not _ID_BODY.fullmatch(body):
        raise InvalidIdError(
            f"execution id {execution_id[:80]!r} is malformed: after {kind.id_prefix + '-'!r} "
            "expected 1 to 63 characters of a-z, 0-9, '_' or '-', starting with a-z or 0-9",
            execution_id=execution_id[:80],
            field="metadata.id",
        )
    return execution_id
