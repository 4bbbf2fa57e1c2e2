"""A LangGraph agent whose tool calls go through the approvals service.

The model is scripted (langchain_core's GenericFakeChatModel), so no LLM key is needed: it
asks for three tool calls, one per turn, then answers. Each tool is guarded by
`require_approval`: the policy allows the handbook read, parks the finance read until a
reviewer decides, and denies the delete; a refusal goes back to the model as the tool's answer.

Run it against `approvals dev` (which prints the tokens):

    export APV_TOKEN=$AGENT        # the demo agent token; APV_URL and APV_TENANT default to
    python examples/langgraph_agent/agent.py   # http://127.0.0.1:8080 and "demo"

and, while it waits, accept or reject the finance read as the reviewer (curl, as `approvals dev`
shows).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from approvals_client import ApprovalsClient, describe_refusal, require_approval

DOCUMENTS = {
    "docs/handbook.md": "Welcome aboard.",
    "finance/q3-report": "Q3 revenue: 4.2M.",
}


def build_tools(client: ApprovalsClient, timeout: float | None) -> list[Any]:
    # The guard sits under @tool: the model's arguments become the action's members, and a
    # refusal is returned as text for the model to read (on_refused) instead of raising.
    @tool
    @require_approval(client, action_type="document_read", on_refused=describe_refusal, timeout=timeout)
    def read_document(resource: str) -> str:
        """Read a document by its path."""
        return DOCUMENTS.get(resource, "(no such document)")

    @tool
    @require_approval(client, action_type="document_delete", on_refused=describe_refusal, timeout=timeout)
    def delete_document(resource: str) -> str:
        """Delete a document by its path."""
        DOCUMENTS.pop(resource, None)
        return "deleted"

    return [read_document, delete_document]


def scripted_model() -> GenericFakeChatModel:
    """Stands in for an LLM: the turns a tool-calling model would produce."""

    def call(n: int, name: str, resource: str) -> AIMessage:
        return AIMessage(content="", tool_calls=[{"name": name, "args": {"resource": resource}, "id": f"call_{n}"}])

    return GenericFakeChatModel(
        messages=iter(
            [
                call(1, "read_document", "docs/handbook.md"),
                call(2, "read_document", "finance/q3-report"),
                call(3, "delete_document", "docs/handbook.md"),
                AIMessage(content="Read the handbook and the Q3 report; deleting was not permitted."),
            ]
        )
    )


def build_graph(client: ApprovalsClient, model: Any | None = None, timeout: float | None = None) -> Any:
    tools = build_tools(client, timeout)
    llm = model if model is not None else scripted_model()

    def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def run(client: ApprovalsClient, timeout: float | None = None) -> list[BaseMessage]:
    graph = build_graph(client, timeout=timeout)
    result = graph.invoke({"messages": [HumanMessage(content="Summarise Q3, then tidy up the handbook.")]})
    return list(result["messages"])


def main() -> int:
    token = os.environ.get("APV_TOKEN") or os.environ.get("AGENT")
    if not token:
        print("set APV_TOKEN (or AGENT) to an agent token, e.g. the one `approvals dev` prints", file=sys.stderr)
        return 2
    url = os.environ.get("APV_URL", "http://127.0.0.1:8080")
    tenant = os.environ.get("APV_TENANT", "demo")
    with ApprovalsClient(url, token, tenant) as client:
        print("waiting for a reviewer on the finance read (accept or reject it)...", file=sys.stderr)
        for message in run(client):
            print(f"{message.type:>6}: {message.content or message.tool_calls}")  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
