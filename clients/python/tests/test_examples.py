"""The examples in `examples/`, run against the real service with a reviewer deciding."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, Service, Tenant
from helpers import Reviewer

from approvals_client import ApprovalsClient


def load(relative: str) -> ModuleType:
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_langgraph_agent(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    pytest.importorskip("langgraph")
    example = load("examples/langgraph_agent/agent.py")
    helper = Reviewer(reviewer, verdict="accept", reason="fine for the summary")
    helper.start()
    messages = example.run(agent, timeout=60)
    (decided,) = helper.finish()
    assert decided.action == {"type": "document_read", "resource": "finance/q3-report"}
    tools = [(m.name, m.content) for m in messages if m.type == "tool"]
    assert tools[0] == ("read_document", "Welcome aboard.")  # allowed by the policy
    assert tools[1] == ("read_document", "Q3 revenue: 4.2M.")  # approved by the reviewer
    assert tools[2][0] == "delete_document" and tools[2][1].startswith("denied by policy: ")
    assert messages[-1].type == "ai" and "not permitted" in messages[-1].content
    assert "docs/handbook.md" in example.DOCUMENTS  # the denied delete never ran


def test_langgraph_agent_with_no_reviewer_in_time(agent: ApprovalsClient) -> None:
    # The guard's timeout used to raise WaitTimeout out of the graph run, past `on_refused`.
    pytest.importorskip("langgraph")
    example = load("examples/langgraph_agent/agent.py")
    messages = example.run(agent, timeout=1)
    tools = [(m.name, m.content) for m in messages if m.type == "tool"]
    assert tools[1][0] == "read_document" and tools[1][1].startswith("no reviewer decided within"), tools
    assert messages[-1].type == "ai"


@pytest.mark.anyio
async def test_openai_agents_agent(service: Service, tenant: Tenant, reviewer: ApprovalsClient) -> None:
    pytest.importorskip("agents")
    from approvals_client import AsyncApprovalsClient

    example = load("examples/openai_agents/agent.py")
    model = example.ScriptedModel(example.script())
    helper = Reviewer(reviewer, verdict="accept", reason="fine for the summary")
    helper.start()
    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:
        result = await example.run(agent, timeout=60, model=model)
    (decided,) = helper.finish()
    assert decided.action == {"type": "document_read", "resource": "finance/q3-report"}
    assert result.final_output == "Read the handbook and the Q3 report; deleting was not permitted."
    outputs = [str(item.output) for item in result.new_items if item.type == "tool_call_output_item"]
    assert outputs[:2] == ["Welcome aboard.", "Q3 revenue: 4.2M."], outputs  # allowed; approved
    assert len(outputs) == 3 and outputs[2].startswith("denied by policy: "), outputs
    # The parked call was the one the reviewer accepted, under the model's call id.
    approvals = [i for i in result.new_items if i.type == "tool_approval_item"]
    assert decided.id in {a.raw_item.call_id for a in approvals}
    assert "docs/handbook.md" in example.DOCUMENTS  # the denied delete never ran
    # The model saw the three tool answers.
    last_input = json.dumps(model.inputs[-1], default=str)
    assert "Welcome aboard." in last_input and "Q3 revenue" in last_input and "denied by policy" in last_input


@pytest.mark.anyio
async def test_openai_agents_agent_with_no_reviewer_in_time(service: Service, tenant: Tenant) -> None:
    pytest.importorskip("agents")
    from approvals_client import AsyncApprovalsClient

    example = load("examples/openai_agents/agent.py")
    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:
        result = await example.run(agent, timeout=1, model=example.ScriptedModel(example.script()))
    outputs = [str(item.output) for item in result.new_items if item.type == "tool_call_output_item"]
    assert len(outputs) == 3 and "no reviewer decided within" in outputs[1], outputs
