"""Random command sequences against a small model of the allowed transitions.

The model knows, for each execution, its phase, how many events it has and how
many of them are ``Completed``. Before every command it predicts success or the
exact error type; after every step the ledger must agree with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import (
    AgentExecutionStatus,
    CreateConflictError,
    ExecutionNotFoundError,
    Ledger,
    LedgerError,
    Phase,
    PhaseBackwardsError,
    TerminalPhaseError,
    VersionConflictError,
    open_ledger,
)
from ledger.contract.kinds import Resource, Status
from tests.support import builders

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_EXECUTIONS = 4
KINDS = ("AgentExecution", "WorkflowExecution")


@dataclass
class Expected:
    """What the model knows of one execution."""

    kind: str
    phase: Phase = Phase.PENDING
    events: int = 1
    completed: int = 0
    messages: int = 0
    has_workflow_id: bool = False


def resource(kind: str, execution_id: str = "", variant: str = "") -> Resource:
    if kind == "AgentExecution":
        return builders.agent_execution(
            execution_id, agent_id="a", message="m" + variant, token=b"t"
        )
    return builders.workflow_execution(execution_id, workflow_id="w" + variant, token=b"t")


def patch(kind: str, phase: Phase, with_content: bool) -> Status:
    if kind == "AgentExecution":
        messages = ["progress"] if with_content else []
        return builders.agent_status(phase, messages, message_type=0)
    return builders.workflow_status(
        phase, temporal_workflow_id="temporal-1" if with_content else ""
    )


class LedgerMachine(RuleBasedStateMachine):
    ids: Bundle[str] = Bundle("ids")

    def __init__(self, url: str) -> None:
        super().__init__()
        self.app: Ledger = open_ledger(url)
        self.model: dict[str, Expected] = {}
        self.unknown = itertools.count()

    def teardown(self) -> None:
        self.app.close()

    # Predicting and checking.

    def expect(self, error: type[LedgerError] | None, command: Callable[[], object]) -> bool:
        """Runs ``command``; it must raise exactly ``error`` (or succeed if None)."""
        try:
            command()
        except LedgerError as e:
            assert error is not None, f"expected success, got {type(e).__name__}: {e}"
            assert type(e) is error, f"expected {error.__name__}, got {type(e).__name__}: {e}"
            return False
        assert error is None, f"expected {error.__name__}, but the command succeeded"
        return True

    def writable_error(self, expected: Expected) -> type[LedgerError] | None:
        return TerminalPhaseError if expected.phase.is_terminal else None

    def finish(self, expected: Expected, phase: Phase) -> None:
        expected.phase = phase
        expected.events += 1
        expected.completed += 1

    # Rules.

    @precondition(lambda self: len(self.model) < MAX_EXECUTIONS)
    @rule(target=ids, kind=st.sampled_from(KINDS), explicit=st.booleans())
    def create(self, kind: str, explicit: bool) -> str:
        execution_id = ""
        if explicit:
            prefix = "aex" if kind == "AgentExecution" else "wex"
            execution_id = f"{prefix}-sm-{len(self.model)}"
        record = self.app.create(resource(kind, execution_id))
        assert record.version == 1
        assert record.phase is Phase.PENDING
        assert record.id not in self.model
        self.model[record.id] = Expected(kind=kind)
        return record.id

    @rule(execution_id=ids, same_spec=st.booleans())
    def create_again(self, execution_id: str, same_spec: bool) -> None:
        expected = self.model[execution_id]
        again = resource(expected.kind, execution_id, variant="" if same_spec else "-changed")
        error = None if same_spec else CreateConflictError
        if self.expect(error, lambda: self.app.create(again)):
            assert self.app.read(execution_id).version == expected.events

    @rule(
        execution_id=ids,
        phase=st.sampled_from(list(Phase)),
        with_content=st.booleans(),
    )
    def update_status(self, execution_id: str, phase: Phase, with_content: bool) -> None:
        expected = self.model[execution_id]
        error = self.writable_error(expected)
        if error is None and phase is not Phase.UNSPECIFIED and phase < expected.phase:
            error = PhaseBackwardsError
        status = patch(expected.kind, phase, with_content)
        if not self.expect(error, lambda: self.app.update_status(execution_id, status)):
            return
        if with_content and expected.kind == "AgentExecution":
            expected.messages += 1
        if phase.is_terminal:
            if with_content:
                expected.events += 1  # StatusChanged with the rest of the patch
            self.finish(expected, phase)
        else:
            # A patch that changes nothing appends nothing: the same phase again, no
            # content, or a workflow's temporal_workflow_id it already has.
            new_phase = phase is not Phase.UNSPECIFIED and phase is not expected.phase
            new_content = with_content and (
                expected.kind == "AgentExecution" or not expected.has_workflow_id
            )
            if new_phase or new_content:
                expected.events += 1
            if with_content and expected.kind == "WorkflowExecution":
                expected.has_workflow_id = True
            if phase is not Phase.UNSPECIFIED:
                expected.phase = phase

    @rule(execution_id=ids, use_expected_version=st.booleans())
    def complete(self, execution_id: str, use_expected_version: bool) -> None:
        expected = self.model[execution_id]
        version = expected.events if use_expected_version else None
        command = lambda: self.app.complete(execution_id, {"ok": 1}, expected_version=version)  # noqa: E731
        if self.expect(self.writable_error(expected), command):
            self.finish(expected, Phase.COMPLETED)

    @rule(execution_id=ids)
    def fail(self, execution_id: str) -> None:
        expected = self.model[execution_id]
        if self.expect(self.writable_error(expected), lambda: self.app.fail(execution_id, "x")):
            self.finish(expected, Phase.FAILED)

    @rule(execution_id=ids)
    def cancel(self, execution_id: str) -> None:
        expected = self.model[execution_id]
        if self.expect(self.writable_error(expected), lambda: self.app.cancel(execution_id, "r")):
            self.finish(expected, Phase.CANCELLED)

    @rule(execution_id=ids, stale_by=st.integers(min_value=1, max_value=3))
    def stale_write(self, execution_id: str, stale_by: int) -> None:
        expected = self.model[execution_id]
        stale = expected.events - stale_by
        self.expect(
            VersionConflictError,
            lambda: self.app.cancel(execution_id, "stale", expected_version=stale),
        )

    @rule(kind=st.sampled_from(KINDS))
    def unknown_execution(self, kind: str) -> None:
        prefix = "aex" if kind == "AgentExecution" else "wex"
        missing = f"{prefix}-missing-{next(self.unknown)}"
        self.expect(ExecutionNotFoundError, lambda: self.app.cancel(missing))

    # Invariants.

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        total = 0
        for execution_id, expected in self.model.items():
            record = self.app.read(execution_id)
            assert record.phase is expected.phase, execution_id
            assert record.version == expected.events, execution_id
            history = self.app.history(execution_id)
            assert len(history) == expected.events
            assert [h.version for h in history] == list(range(1, expected.events + 1))
            types = [h.type for h in history]
            assert types[0] == "Created"
            assert types.count("Created") == 1
            assert types.count("Completed") == expected.completed <= 1
            if expected.completed:
                assert types[-1] == "Completed"
                assert history[-1].phase is expected.phase
            status = record.resource.status
            if isinstance(status, AgentExecutionStatus):
                assert len(status.messages) == expected.messages
            total += expected.events
        assert (self.app.recorder.max_notification_id() or 0) == total


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_random_command_sequences(store: str, tmp_path: Path) -> None:
    databases = itertools.count()

    def url() -> str:
        if store == "memory":
            return "memory://"
        return f"sqlite:///{tmp_path}/ledger-{next(databases)}.db"

    class Machine(LedgerMachine):
        def __init__(self) -> None:
            super().__init__(url())

    run_state_machine_as_test(Machine, settings=SETTINGS)
