"""The Ledger application: the Python API for commands and reads.

Every command validates its input, then appends all of its events in one
atomic write, or none. Writes are optimistic: each accepts an
``expected_version`` (the version the caller last read); without one, a write
that loses a race re-reads the execution and decides again, so no update is
lost and exactly one of two racing completions wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar, cast

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate
from eventsourcing.persistence import (
    InterfaceError,
    JSONTranscoder,
    MapperDeserialisationError,
    OperationalError,
    ProgrammingError,
    RecordConflictError,
    Recording,
    StoredEvent,
)
from google.protobuf.message import Message

from ledger._writes import comparable, denied_or, retries, unreadable
from ledger.contract.errors import (
    CreateConflictError,
    ExecutionDeletedError,
    ExecutionNotFoundError,
    ImmutableFieldError,
    InvalidResourceError,
    MissingFieldError,
    StoreUnavailableError,
    UserError,
    VersionConflictError,
)
from ledger.contract.ids import check_id, kind_of_id
from ledger.contract.kinds import Kind, Resource, Status, copy_resource, kind_of
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.domain.validation import (
    about,
    check_envelope,
    check_metadata_counts,
    check_spec,
    check_text,
)
from ledger.store.connections import check_store_exists, prepare_store, setup_lock
from ledger.store.keys import check_application_keys
from ledger.store.transcodings import register_ledger_transcodings
from ledger.store.url import StoreConfig, parse_url
from ledger.store.vault import SecretVault


@dataclass(frozen=True)
class ExecutionRecord:
    """An execution as recorded: its resource and its version (events so far)."""

    resource: Resource
    version: int
    written: bool = field(default=True, compare=False)
    """False when all of it was already recorded and nothing was appended."""

    @property
    def id(self) -> str:
        return self.resource.metadata.id

    @property
    def phase(self) -> Phase:
        return Phase(self.resource.status.phase)


@dataclass(frozen=True)
class HistoryEntry:
    """One event of an execution's history."""

    version: int
    recorded_at: datetime
    type: str
    """``Created``, ``StatusChanged``, ``MetadataChanged``, ``Completed`` or ``Deleted``."""
    phase: Phase
    """The phase after this event."""
    event: Execution.Event


class Ledger(Application[str]):
    """An event-sourced ledger of AgentExecutions and WorkflowExecutions."""

    name = "Ledger"
    env: ClassVar[dict[str, str]] = {"ORIGINATOR_ID_TYPE": "text"}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        try:
            super().__init__(env)
            self.keys = check_application_keys(self)
            self.vault = SecretVault(
                self.recorder,
                self.mapper.cipher,
                create_table=getattr(self.factory, "env_create_table", lambda: True)(),
            )
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailableError(f"cannot open the ledger's store: {e}") from e

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        register_ledger_transcodings(transcoder)

    def save(
        self,
        *objs: MutableOrImmutableAggregate[str] | DomainEventProtocol[str] | None,
        **kwargs: Any,
    ) -> list[Recording[str]]:
        """The library's ``save``; for executions alone, without its runtime checks.

        The library tells aggregates from events with ``isinstance`` against
        runtime-checkable Protocols, which costs about 10 µs a check on Python
        3.11, twice per saved object: a fifth of a command's own CPU time. An
        :class:`Execution` is known to be an aggregate, so its events are collected
        directly; then everything goes on exactly as in the library's ``save``.
        """
        if kwargs or not all(type(obj) is Execution for obj in objs):
            return super().save(*objs, **kwargs)
        processing_event: ProcessingEvent[str] = ProcessingEvent()
        for obj in objs:
            execution = cast(Execution, obj)
            processing_event.events.extend(execution.collect_events())
            processing_event.aggregates[execution.id] = execution
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # Deprecated in the library, still called.
        return recordings

    # Commands.

    def create(self, resource: Resource, *, actor: str = "") -> ExecutionRecord:
        """Records a new execution from ``resource`` (metadata and spec; no status).

        Without ``metadata.id`` the execution gets ``aex-<ulid>`` / ``wex-<ulid>``.
        Idempotent on the id: the same id with an identical kind and spec returns
        the recorded execution and appends nothing; a different spec raises
        :class:`~ledger.contract.errors.CreateConflictError`.
        """
        kind = kind_of(resource)
        values: Any = resource
        given = values.metadata.id  # Errors name only an id the caller gave.
        if given:
            check_id(given, kind)
        check_envelope(kind, values.api_version, values.kind, execution_id=given)
        if values.HasField("status") and values.status.ByteSize():
            raise InvalidResourceError(
                f"{about(given)}status is observed, not given: create takes "
                "metadata and spec only (record status with update_status)",
                execution_id=given,
                field="status",
            )
        check_spec(kind, values.spec, execution_id=given)
        check_metadata_counts(values.metadata, execution_id=given)
        check_text(actor, execution_id=given, field="actor")
        execution_id = given or kind.new_id()
        # Optimistic: write first; an existing id shows up as a conflict, then compare.
        spec: Any = type(values.spec)()
        spec.CopyFrom(values.spec)
        try:
            self.vault.seal(execution_id, spec)
        except ProgrammingError as e:
            raise denied_or(e, execution_id) from e
        execution = Execution.create(execution_id, kind, values.metadata, spec, actor=actor)
        try:
            self._save(execution)
        except RecordConflictError:
            self._evict(execution_id)
            existing = self._same_or_conflict(self._load(execution_id), kind, values.spec)
            return replace(existing, written=False)
        return self._as_record(execution)

    def update_status(
        self,
        execution_id: str,
        patch: Status,
        *,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Applies a status patch (see :mod:`ledger.status`); a terminal phase completes.
        A patch that changes nothing appends nothing (``written`` is False)."""
        return self._write(
            execution_id, expected_version, lambda e: e.record_status(patch, actor=actor)
        )

    def complete(
        self,
        execution_id: str,
        output: Mapping[str, Any] | None = None,
        *,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Ends the execution in COMPLETED with an optional JSON-object output."""
        return self._write(
            execution_id, expected_version, lambda e: e.complete(output, actor=actor)
        )

    def fail(
        self,
        execution_id: str,
        message: str,
        *,
        error_type: str = "ExecutionFailed",
        details: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Ends the execution in FAILED with a structured error (type, message, details)."""
        return self._write(
            execution_id,
            expected_version,
            lambda e: e.fail(message, error_type=error_type, details=details, actor=actor),
        )

    def cancel(
        self,
        execution_id: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Ends the execution in CANCELLED, with an optional reason."""
        return self._write(execution_id, expected_version, lambda e: e.cancel(reason, actor=actor))

    def record_cancel_request(
        self, execution_id: str, *, by: str = "", actor: str = ""
    ) -> ExecutionRecord:
        """Records that the execution's caller asked to cancel it (``CancelRequested``,
        once; nothing once the execution has ended). The runner sees it in ``get()``
        (annotation ``execution-ledger/cancel-requested-at``) and cancels the execution
        when it has stopped."""
        return self._write(execution_id, None, lambda e: e.request_cancel(by=by, actor=actor))

    def record_caller_gone(
        self, execution_id: str, reason: str, *, actor: str = ""
    ) -> ExecutionRecord:
        """Records that nobody waits for the execution any more (``CallerGone``, once;
        nothing once it has ended): its runner may stop spending compute."""
        return self._write(execution_id, None, lambda e: e.record_caller_gone(reason, actor=actor))

    def update(
        self,
        resource: Resource,
        *,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Changes an execution's metadata labels, annotations and tags (``metadata.id``
        names it). Everything else must be as recorded: a different spec, kind or
        other metadata field raises :class:`~ledger.contract.errors.ImmutableFieldError`
        (an empty spec means "unchanged"); a status is refused (use update_status).
        Nothing is appended when nothing changes; refused after a terminal phase."""
        kind = kind_of(resource)
        values: Any = resource
        execution_id = values.metadata.id
        if not execution_id:
            raise MissingFieldError(
                "an update names its execution in metadata.id", field="metadata.id"
            )
        check_id(execution_id, kind)
        check_envelope(kind, values.api_version, values.kind, execution_id=execution_id)
        if values.HasField("status") and values.status.ByteSize():
            raise InvalidResourceError(
                f"{about(execution_id)}an update changes metadata only: record status "
                "with update_status",
                execution_id=execution_id,
                field="status",
            )
        check_metadata_counts(values.metadata, execution_id=execution_id)
        check_text(actor, execution_id=execution_id, field="actor")
        metadata = values.metadata

        def decide(execution: Execution) -> None:
            if execution.kind_name != kind.name:
                raise ImmutableFieldError(execution_id, "kind")
            recorded: Any = execution.resource
            if values.HasField("spec") and values.spec.ByteSize():
                current = self._as_record(execution).resource.spec
                shredded = execution.phase.is_terminal
                if comparable(current, shredded) != comparable(values.spec, shredded):
                    raise ImmutableFieldError(execution_id, "spec")
            for name in ("name", "slug", "org", "owner_scope", "version"):
                if getattr(recorded.metadata, name) != getattr(metadata, name):
                    raise ImmutableFieldError(execution_id, f"metadata.{name}")
            execution.change_metadata(
                dict(metadata.labels),
                dict(metadata.annotations),
                list(metadata.tags),
                actor=actor,
            )

        return self._write(execution_id, expected_version, decide)

    def delete(
        self,
        execution_id: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        actor: str = "",
    ) -> ExecutionRecord:
        """Records the execution as deleted, cancelling it first (in the same write) when
        it is still open, so its caller is woken; secret values are shredded as at any
        terminal phase. The history is kept (:meth:`history`); reads and writes raise
        :class:`~ledger.contract.errors.ExecutionDeletedError` from then on. Returns the
        execution as it was when deleted."""
        return self._write(execution_id, expected_version, lambda e: e.delete(reason, actor=actor))

    # Reads.

    def get(self, execution_id: str) -> Resource:
        """The execution's current resource: spec, status and audit."""
        return self.read(execution_id).resource

    def read(self, execution_id: str) -> ExecutionRecord:
        """The execution's current resource and version (always read from the store)."""
        self._evict(execution_id)
        return self._as_record(self._load(execution_id))

    def history(self, execution_id: str) -> list[HistoryEntry]:
        """Every event of one execution, in order, with its time, version and phase."""
        check_id(execution_id, kind_of_id(execution_id))
        entries: list[HistoryEntry] = []
        execution: Execution | None = None
        for event in self._events(execution_id):
            execution = cast(Execution, event.mutate(execution))
            entries.append(
                HistoryEntry(
                    version=event.originator_version,
                    recorded_at=event.timestamp,
                    type=type(event).__name__,
                    phase=execution.phase,
                    event=event,
                )
            )
        if not entries:
            raise ExecutionNotFoundError(execution_id)
        return entries

    def changes(self, execution_id: str, *, after: int = 0) -> ExecutionChanges:
        """The execution's successive resources after version ``after``, one per
        event, read from its stream in order (for subscriptions; see
        :class:`ExecutionChanges`)."""
        check_id(execution_id, kind_of_id(execution_id))
        if after < 0:
            raise InvalidResourceError(
                f"execution {execution_id!r}: a version is 0 or more (got {after})",
                execution_id=execution_id,
                field="version",
            )
        return ExecutionChanges(self, execution_id, after)

    # Internals.

    def _write(
        self,
        execution_id: str,
        expected_version: int | None,
        decide: Callable[[Execution], object],
    ) -> ExecutionRecord:
        # The aggregate cache (when enabled) is only a hint: the store's version check
        # catches a stale one, and anything refused on cached state is re-decided fresh.
        fresh = False
        for _ in retries():
            execution = self._load(execution_id)
            try:
                if expected_version is not None and execution.version != expected_version:
                    raise VersionConflictError(execution_id, expected_version, execution.version)
                decide(execution)
            except UserError:
                if fresh or self.repository.cache is None:
                    raise
                fresh = True
                self._evict(execution_id)
                continue
            if not execution.pending_events:  # Nothing new (e.g. a re-sent status).
                return replace(self._as_record(execution), written=False)
            try:
                self._save(execution)
            except RecordConflictError:
                self._evict(execution_id)
                if expected_version is not None:
                    actual = self._load(execution_id).version
                    raise VersionConflictError(execution_id, expected_version, actual) from None
                continue
            if execution.phase.is_terminal and execution.has_sealed_secrets:
                self.vault.destroy(execution_id)  # Crypto-shred the secret values.
            return self._as_record(execution)
        raise StoreUnavailableError(f"execution {execution_id!r}: too many conflicting writes")

    def _evict(self, execution_id: str) -> None:
        if self.repository.cache is not None:
            with contextlib.suppress(KeyError):
                self.repository.cache.get(execution_id, evict=True)

    def _as_record(self, execution: Execution) -> ExecutionRecord:
        """A copy of the execution's resource, its secret values decrypted (or shredded)."""
        resource = copy_resource(execution.resource)
        if execution.has_sealed_secrets:
            if execution.phase.is_terminal:
                with contextlib.suppress(ProgrammingError):  # A reader may not destroy.
                    if self.vault.has_key(execution.id):
                        self.vault.destroy(execution.id)  # A crash cut off the shredding.
            self.vault.reveal(execution.id, resource.spec)
        return ExecutionRecord(resource=resource, version=execution.version)

    def _save(self, execution: Execution) -> None:
        """Saves the pending events, or raises ``RecordConflictError`` (a race lost).

        A commit whose acknowledgement was lost is not a conflict here: the
        PostgreSQL recorder recognises its own rows (:mod:`ledger.recorder`).
        """
        try:
            self.save(execution)
        except ProgrammingError as e:
            raise denied_or(e, execution.id) from e
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailableError(
                f"execution {execution.id!r}: the store is unavailable and did not confirm "
                f"the write (all or nothing: read the execution, or retry later): {e}"
            ) from e

    def _load(self, execution_id: str) -> Execution:
        check_id(execution_id, kind_of_id(execution_id))
        try:
            execution = cast(Execution, self.repository.get(execution_id))
        except AggregateNotFoundError:
            raise ExecutionNotFoundError(execution_id) from None
        except MapperDeserialisationError as e:
            raise unreadable(execution_id, e) from e
        except ProgrammingError as e:
            raise denied_or(e, execution_id) from e
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailableError(
                f"execution {execution_id!r}: the store is unavailable: {e}"
            ) from e
        if execution.deleted:
            raise ExecutionDeletedError(execution_id)
        return execution

    def _events(
        self,
        execution_id: str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Execution.Event]:
        try:
            for event in self.events.get(execution_id, gt=gt, lte=lte, limit=limit):
                yield cast(Execution.Event, event)
        except MapperDeserialisationError as e:
            raise unreadable(execution_id, e) from e
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailableError(
                f"execution {execution_id!r}: the store is unavailable: {e}"
            ) from e

    def _same_or_conflict(self, existing: Execution, kind: Kind, spec: Message) -> ExecutionRecord:
        if existing.kind_name != kind.name:
            raise CreateConflictError(existing.id, f"kind ({existing.kind_name})")
        record = self._as_record(existing)
        shredded = existing.phase.is_terminal
        if comparable(record.resource.spec, shredded) != comparable(spec, shredded):
            raise CreateConflictError(existing.id, "spec")
        return record


class ExecutionChanges:
    """One execution's resource after each of its events past a version, in order.

    Keeps the execution as of the last event returned, so each :meth:`next` reads
    only the events after it from the store: a reader that falls behind reads
    at its own pace, and nothing is missed or repeated.
    """

    def __init__(self, ledger: Ledger, execution_id: str, after: int) -> None:
        self._ledger = ledger
        self.execution_id = execution_id
        self.version = after
        """The version of the last resource returned (``after`` before the first)."""
        self._execution: Execution | None = None

    def next(self, limit: int = 100) -> list[ExecutionRecord]:
        """The resources after the next events (at most ``limit``); [] when none yet."""
        ledger = self._ledger
        if self._execution is None and self.version > 0:
            for event in ledger._events(self.execution_id, lte=self.version):
                self._execution = cast(Execution, event.mutate(self._execution))
            if self._execution is None:
                raise ExecutionNotFoundError(self.execution_id)
        records: list[ExecutionRecord] = []
        for event in ledger._events(self.execution_id, gt=self.version, limit=limit):
            if isinstance(event, Execution.Deleted):
                break  # Only ever after the terminal phase, where a reader stops.
            self._execution = cast(Execution, event.mutate(self._execution))
            self.version = event.originator_version
            records.append(ledger._as_record(self._execution))
        return records

    def apply(self, stored: Sequence[StoredEvent]) -> list[ExecutionRecord] | None:
        """The resources after events already read from the log (a follower's page), or
        None when they do not follow on from :attr:`version` without a gap (or cannot be
        decoded here): then :meth:`next` reads the store instead. Events at or before
        :attr:`version` are passed over ([] when all are)."""
        if self._execution is None:
            return None
        ahead = [e for e in stored if e.originator_version > self.version]
        if not ahead:
            return []
        if ahead[0].originator_version != self.version + 1:
            return None
        try:  # Decoded first: nothing changes unless every event can be applied.
            events = [cast(Execution.Event, self._ledger.mapper.to_domain_event(e)) for e in ahead]
        except Exception:  # next() reads the same events and reports what is wrong.
            return None
        if any(e.originator_version != self.version + n for n, e in enumerate(events, 1)):
            return None
        records: list[ExecutionRecord] = []
        execution = self._execution
        for event in events:
            if isinstance(event, Execution.Deleted):
                break  # As in next(): only after the terminal phase.
            execution = cast(Execution, event.mutate(execution))
            records.append(self._ledger._as_record(execution))
        self._execution = execution
        self.version += len(records)
        return records

    @property
    def is_terminal(self) -> bool:
        """Whether the last resource returned is in a terminal phase."""
        return self._execution is not None and self._execution.phase.is_terminal


WRITER_CACHE = {"AGGREGATE_CACHE_MAXSIZE": "1000", "AGGREGATE_CACHE_FASTFORWARD": "n"}
"""A writer keeps the executions it last wrote, so its next command needs no read;
the store's version check catches a copy made stale by another process."""


def open_ledger(url: str | None = None, *, cipher_key: str | None = None) -> Ledger:
    """Opens the ledger at ``url`` (default ``$LEDGER_URL``, else the SQLite default)."""
    config = parse_url(url, cipher_key=cipher_key)
    return open_ledger_with(config)


def open_ledger_with(
    config: StoreConfig, *, cache: bool = True, must_exist: bool = False
) -> Ledger:
    """Opens the ledger described by a parsed :class:`~ledger.store.url.StoreConfig`.

    ``cache``: keep recently written executions in memory (see :data:`WRITER_CACHE`);
    followers that only read pass ``False``. ``must_exist``: for reads, which never
    create a store: :class:`~ledger.contract.errors.StoreNotFoundError` when there is
    none yet.
    """
    if must_exist:
        check_store_exists(config)
    else:
        prepare_store(config)
    env = {**config.env, **WRITER_CACHE} if cache else config.env
    with setup_lock(config):
        return Ledger(env)
