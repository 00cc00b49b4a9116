"""The caller contract (issue 11): what the waiting caller receives and what ``get()``
shows, for both kinds."""

from __future__ import annotations

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    Ledger,
    WorkflowExecution,
    WorkflowExecutionSpec,
)
from ledger.domain.execution import Execution
from projections.dispatch.calls import final_resource


def test_the_output_of_both_kinds_is_in_the_final_resource(ledger_app: Ledger) -> None:
    agent = ledger_app.create(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m", callback_token=b"t"))
    ).id
    workflow = ledger_app.create(
        WorkflowExecution(spec=WorkflowExecutionSpec(workflow_id="w", callback_token=b"t"))
    ).id
    output = {"summary": "Revenue grew 12%", "figures": [1.0, 2.5], "ok": True}
    for execution_id in (agent, workflow):
        ledger_app.complete(execution_id, output)
        resource = ledger_app.get(execution_id)
        assert dict(resource.status.output) == {**output, "figures": [1.0, 2.5]}
        # What the dispatcher sends the caller: the same output, the token cleared.
        execution: object = ledger_app.repository.get(execution_id)
        assert isinstance(execution, Execution)
        sent = final_resource(execution)
        assert sent.status.output == resource.status.output
        assert sent.spec.callback_token == b""
