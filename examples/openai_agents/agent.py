"""An OpenAI Agents SDK agent whose tools' `needs_approval` is answered by the approvals service.

The SDK asks `needs_approval(ctx, arguments, call_id)` before each tool call. Here that question
goes to the service: the call is submitted as an action (the model's `call_id` becomes the
`request_id`), an `allow` runs the tool at once, anything else interrupts the run. The run's
interruptions are then settled by the service too: a denied call is rejected with the policy's
reasons, a parked one waits for a reviewer's decision (accept -> `state.approve`, reject,
expiry or no decision within the timeout -> `state.reject` with the reason), and the run
resumes from its state.

No LLM key is needed: `ScriptedModel` implements the SDK's `Model` interface with canned
responses (three tool calls, then an answer). Run it against `approvals dev`:

    export APV_TOKEN=$AGENT        # the demo agent token; APV_URL and APV_TENANT default to
    python examples/openai_agents/agent.py     # http://127.0.0.1:8080 and "demo"

and accept or reject the finance read as the reviewer while it waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import uuid
from typing import Any, AsyncIterator

from agents import (
    Agent,
    Model,
    ModelResponse,
    ModelSettings,
    RunConfig,
    Runner,
    ToolApprovalItem,
    Usage,
    function_tool,
)
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from approvals_client import (
    AsyncApprovalsClient,
    Decision,
    GuardOutcome,
    SubmitResponse,
    TimedOut,
    WaitTimeout,
    describe_refusal,
)

DOCUMENTS = {
    "docs/handbook.md": "Welcome aboard.",
    "finance/q3-report": "Q3 revenue: 4.2M.",
}

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def request_id_for(call_id: str) -> str:
    """The model's tool-call id as the service's request id (hashed if it is not a valid one)."""
    return call_id if REQUEST_ID.match(call_id) else hashlib.sha256(call_id.encode()).hexdigest()[:32]


class ServiceApprovals:
    """The approvals service behind the SDK's human-in-the-loop hooks."""

    def __init__(self, client: AsyncApprovalsClient, timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.submitted: dict[str, tuple[str, dict[str, Any], SubmitResponse]] = {}

    def needs_approval(self, action_type: str) -> Any:
        """A `needs_approval` callable for a tool whose calls are actions of `action_type`."""

        async def ask(_ctx: Any, arguments: dict[str, Any], call_id: str) -> bool:
            # The tool's type last: an argument the model names `type` must not pass a delete
            # off as a read.
            submitted = await self.client.submit({**arguments, "type": action_type}, request_id=request_id_for(call_id))
            self.submitted[call_id] = (action_type, arguments, submitted)
            return submitted.decision is not Decision.ALLOW

        return ask

    async def settle(self, state: Any, interruptions: list[ToolApprovalItem]) -> None:
        """Approves or rejects each interrupted call as the service decides (waiting for a
        reviewer where the policy asked for one)."""
        for item in interruptions:
            call_id = getattr(item.raw_item, "call_id", None)
            if call_id is None or call_id not in self.submitted:
                state.reject(item, rejection_message="not submitted to the approvals service")
                continue
            _, _, submitted = self.submitted[call_id]
            outcome: GuardOutcome | None = submitted.outcome()
            if outcome is None:
                assert submitted.approval is not None
                try:
                    # The approval the submit returned: an outage during the first poll is
                    # waited out, as the approval is known to exist.
                    outcome = await self.client.wait(submitted.approval.id, timeout=self.timeout, approval=submitted.approval)
                except WaitTimeout as error:
                    # Nobody decided in time: the call is refused, the run goes on.
                    outcome = TimedOut(error.approval)
            if outcome.permitted:
                state.approve(item)
            else:
                state.reject(item, rejection_message=describe_refusal(outcome))


class ScriptedModel(Model):
    """Stands in for an LLM: returns the next canned turn on each call."""

    def __init__(self, turns: list[list[Any]]) -> None:
        self.turns = list(turns)
        self.inputs: list[Any] = []

    async def get_response(self, system_instructions: str | None, input: Any, model_settings: ModelSettings,
                           tools: list[Any], output_schema: Any, handoffs: list[Any], tracing: Any, *,
                           previous_response_id: str | None = None, conversation_id: str | None = None,
                           prompt: Any = None, **_: Any) -> ModelResponse:
        self.inputs.append(input)
        output = self.turns.pop(0)
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the scripted model does not stream")


def tool_call(name: str, **arguments: Any) -> ResponseFunctionToolCall:
    call_id = f"call_{uuid.uuid4().hex[:24]}"  # unique like a real model's, so reruns park anew
    return ResponseFunctionToolCall(type="function_call", name=name, call_id=call_id, arguments=json.dumps(arguments), id=f"fc_{call_id}", status="completed")


def answer(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{uuid.uuid4().hex[:24]}", role="assistant", status="completed", type="message",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


def script() -> list[list[Any]]:
    return [
        [tool_call("read_document", resource="docs/handbook.md")],
        [tool_call("read_document", resource="finance/q3-report")],
        [tool_call("delete_document", resource="docs/handbook.md")],
        [answer("Read the handbook and the Q3 report; deleting was not permitted.")],
    ]


def build_agent(approvals: ServiceApprovals, model: Model) -> Agent[Any]:
    @function_tool(needs_approval=approvals.needs_approval("document_read"))
    def read_document(resource: str) -> str:
        """Read a document by its path."""
        return DOCUMENTS.get(resource, "(no such document)")

    @function_tool(needs_approval=approvals.needs_approval("document_delete"))
    def delete_document(resource: str) -> str:
        """Delete a document by its path."""
        DOCUMENTS.pop(resource, None)
        return "deleted"

    return Agent(name="analyst", instructions="Answer with the documents you may read.", model=model,
                 tools=[read_document, delete_document])


async def run(client: AsyncApprovalsClient, timeout: float | None = None, model: Model | None = None) -> Any:
    """Runs the agent to its final answer; returns the SDK's last `RunResult`."""
    approvals = ServiceApprovals(client, timeout)
    agent = build_agent(approvals, model if model is not None else ScriptedModel(script()))
    config = RunConfig(tracing_disabled=True)  # nothing is sent to OpenAI
    result = await Runner.run(agent, "Summarise Q3, then tidy up the handbook.", run_config=config)
    while result.interruptions:
        state = result.to_state()
        await approvals.settle(state, result.interruptions)
        result = await Runner.run(agent, state, run_config=config)
    return result


async def main() -> int:
    token = os.environ.get("APV_TOKEN") or os.environ.get("AGENT")
    if not token:
        print("set APV_TOKEN (or AGENT) to an agent token, e.g. the one `approvals dev` prints", file=sys.stderr)
        return 2
    url = os.environ.get("APV_URL", "http://127.0.0.1:8080")
    tenant = os.environ.get("APV_TENANT", "demo")
    async with AsyncApprovalsClient(url, token, tenant) as client:
        print("waiting for a reviewer on the finance read (accept or reject it)...", file=sys.stderr)
        result = await run(client)
    for item in result.new_items:
        print(f"{item.type}: {getattr(item, 'output', '') or ''}")
    print("final:", result.final_output)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
