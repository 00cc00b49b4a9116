"""Issue 10's defects, each with a test that failed before its fix (beside
``tests/test_keys.py`` for the cipher keys)."""

from __future__ import annotations

import pytest

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    InvalidResourceError,
    Ledger,
    WorkflowExecution,
    WorkflowExecutionSpec,
)


def test_a_refused_create_names_no_id_the_caller_did_not_give(ledger_app: Ledger) -> None:
    with pytest.raises(InvalidResourceError) as refused:
        ledger_app.create(AgentExecution(spec=AgentExecutionSpec(agent_id="a")))
    assert str(refused.value).startswith("the new execution: an AgentExecution needs")
    assert "aex-" not in str(refused.value)
    assert refused.value.execution_id == ""
    given = WorkflowExecution(spec=WorkflowExecutionSpec())
    given.metadata.id = "wex-mine"
    with pytest.raises(InvalidResourceError, match=r"^execution 'wex-mine': a WorkflowExecution"):
        ledger_app.create(given)
    assert ledger_app.recorder.max_notification_id() in (None, 0)
