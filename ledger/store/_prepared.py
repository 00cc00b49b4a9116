"""The one-event insert's call, on the library's pool with psycopg's lowest layer.

Every command of the ledger ends in one call of the recorder's ``insert1`` function
(:mod:`ledger.store.recorder`). Through the library's ``get_connection`` and a
psycopg cursor, that call cost more client CPU than the rest of the insert: the
pool opened again, type adapters checked, a context manager per layer, a cursor
made, the query converted and its parameters adapted, a result set built. Here it
is what psycopg itself does underneath: the connection is taken from the pool and
given back, the statement prepared once per connection under a name of its own and
executed with binary parameters, each step waited for by the connection's own
``wait`` (which releases the GIL and cancels on an interrupt); errors are the
psycopg errors of the server's answer, then the library's, exactly as its
``get_connection`` maps them.
"""

from __future__ import annotations

import hashlib
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)
from eventsourcing.postgres import PostgresDatastore
from psycopg import errors, pq
from psycopg.generators import execute

T = TypeVar("T")

_LIBRARY_ERRORS: tuple[tuple[type[psycopg.Error], type[Exception]], ...] = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
)

_INT8 = struct.Struct(">q")
_FATAL = pq.ExecStatus.FATAL_ERROR
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_UNDEFINED_STATEMENT = "26000"
"""SQLSTATE of a prepared statement the connection no longer holds (``DEALLOCATE``)."""


def library_error(error: psycopg.Error) -> Exception:
    """``error`` as the library's ``get_connection`` raises it."""
    for psycopg_type, library_type in _LIBRARY_ERRORS:
        if isinstance(error, psycopg_type):
            return library_type(str(error))
    return PersistenceError(str(error))


def on_connection(datastore: PostgresDatastore, use: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``use`` on a connection of the datastore's pool: what the library's
    ``get_connection`` does (with its errors), without its per-call overhead."""
    pool = datastore.pool
    if pool.closed:  # Not opened yet (or closed): the library opens it, or says why not.
        with datastore.get_connection() as conn:
            return use(conn)
    try:
        conn = pool.getconn()
        try:
            with conn:  # As the pool's connection(): commit, or roll back on an error.
                return use(conn)
        finally:
            pool.putconn(conn)
    except psycopg.Error as e:
        raise library_error(e) from e


class _ConnectionState:
    __slots__ = ("encoding", "prepared")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.encoding = conn.info.encoding
        self.prepared = False


class PreparedStatement:
    """A statement (``$n`` placeholders, parameters sent as bytes in the given formats)
    prepared once per connection of the pool under a name of its own, then executed."""

    def __init__(self, datastore: PostgresDatastore, statement: bytes) -> None:
        self.datastore = datastore
        self.statement = statement
        self.name = b"ledger_" + hashlib.sha256(statement).hexdigest()[:24].encode()
        self._states: weakref.WeakKeyDictionary[psycopg.Connection[Any], _ConnectionState] = (
            weakref.WeakKeyDictionary()
        )

    def encoding(self, conn: psycopg.Connection[Any]) -> str:
        """The connection's client encoding (of text parameters and messages)."""
        return self._state(conn).encoding

    def execute(
        self,
        conn: psycopg.Connection[Any],
        params: Sequence[bytes],
        formats: Sequence[int],
        *,
        binary_result: bool = False,
    ) -> pq.abc.PGresult:
        """The statement's result on ``conn``, or the server's error as psycopg's."""
        info = self._state(conn)
        with conn.lock:
            for _ in range(2):
                if not info.prepared:
                    self._prepare(conn, info.encoding)
                    info.prepared = True
                pgconn = conn.pgconn
                pgconn.send_query_prepared(
                    self.name, params, param_formats=formats, result_format=int(binary_result)
                )
                result = _one(conn.wait(execute(pgconn)))
                if result.status != _FATAL:
                    return result
                error = errors.error_from_result(result, encoding=info.encoding)
                if error.sqlstate != _UNDEFINED_STATEMENT:
                    raise error
                info.prepared = False  # Deallocated by someone: prepare it again.
            raise error

    def _state(self, conn: psycopg.Connection[Any]) -> _ConnectionState:
        info = self._states.get(conn)
        if info is None:
            info = self._states[conn] = _ConnectionState(conn)
        return info

    def _prepare(self, conn: psycopg.Connection[Any], encoding: str) -> None:
        pgconn = conn.pgconn
        pgconn.send_prepare(self.name, self.statement)
        result = _one(conn.wait(execute(pgconn)))
        if result.status == _FATAL:
            error = errors.error_from_result(result, encoding=encoding)
            if error.sqlstate != "42P05":  # duplicate_prepared_statement: already there.
                raise error


class PreparedInsertOne:
    """``SELECT <function>($1::text, $2::text, $3::bigint, $4::text, $5::bytea)``,
    returning one bigint: the insert of one event with a text originator id."""

    def __init__(self, datastore: PostgresDatastore, statement: bytes) -> None:
        self.datastore = datastore
        self.prepared = PreparedStatement(datastore, statement)

    def __call__(
        self, lock_timeout: str, originator_id: str, version: int, topic: str, state: bytes
    ) -> int:
        prepared = self.prepared

        def call(conn: psycopg.Connection[Any]) -> int:
            encoding = prepared.encoding(conn)
            params = [
                lock_timeout.encode(encoding),
                originator_id.encode(encoding),
                _INT8.pack(version),
                topic.encode(encoding),
                state,
            ]
            result = prepared.execute(conn, params, _BINARY_5, binary_result=True)
            value = result.get_value(0, 0) if result.status == _TUPLES_OK else None
            if value is None:
                msg = f"the insert returned no notification id (status {result.status})"
                raise psycopg.InterfaceError(msg)
            return int(_INT8.unpack(value)[0])

        return on_connection(self.datastore, call)


_BINARY_5 = [1, 1, 1, 1, 1]


def _one(results: Sequence[pq.abc.PGresult]) -> pq.abc.PGresult:
    if len(results) != 1:
        msg = f"expected one result from the server, got {len(results)}"
        raise psycopg.InterfaceError(msg)
    return results[0]
