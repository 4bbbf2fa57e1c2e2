"""Many waits on one HTTP/2 connection: the service speaks HTTP/2 with prior knowledge, and the
client takes any httpx client, so an agent process waiting on many approvals needs one socket."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
from conftest import SENSITIVE_READ, Tenant

from approvals_client import ApprovalsClient, Approved, AsyncApprovalsClient

WAITS = 20


async def waiting_in(base_url: str) -> float:
    """The service's count of long-polls waiting, from its metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{base_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("approvals_long_polls_in_flight "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.anyio
async def test_waits_share_one_http2_connection(
    async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient], tenant: Tenant
) -> None:
    agent, reviewer = async_clients
    ids = [f"h2-{i}" for i in range(WAITS)]
    versions: set[str] = set()

    async def on_response(response: httpx.Response) -> None:
        versions.add(response.http_version)

    # One connection at most: over HTTP/1.1 the waits would queue behind one another, and the
    # service would never see them all waiting at once.
    http = httpx.AsyncClient(
        http1=False,
        http2=True,
        limits=httpx.Limits(max_connections=1),
        timeout=60,
        event_hooks={"response": [on_response]},
    )
    async with agent, reviewer, http:
        for approval_id in ids:
            assert (await agent.submit(SENSITIVE_READ, request_id=approval_id)).created
        waiter = AsyncApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http)
        outcomes: dict[str, object] = {}

        async def wait(approval_id: str) -> None:
            outcomes[approval_id] = await waiter.wait(approval_id, timeout=30)

        async with anyio.create_task_group() as tg:
            for approval_id in ids:
                tg.start_soon(wait, approval_id)
            with anyio.fail_after(20):
                while await waiting_in(agent.base_url) < WAITS:
                    await anyio.sleep(0.05)
            for approval_id in ids:
                await reviewer.accept(approval_id, reason="one socket")
    assert all(isinstance(outcomes[i], Approved) for i in ids), outcomes
    assert versions == {"HTTP/2"}


def test_the_sync_client_waits_over_http2(agent: ApprovalsClient, reviewer: ApprovalsClient, tenant: Tenant) -> None:
    """The sync client takes an `httpx.Client(http2=True)` the same way, and a wait on it
    learns a decision taken while it waits."""
    versions: set[str] = set()
    http = httpx.Client(
        http1=False,
        http2=True,
        timeout=60,
        event_hooks={"response": [lambda response: versions.add(response.http_version)]},
    )
    with http:
        assert agent.submit(SENSITIVE_READ, request_id="h2-sync").created
        waiter = ApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http)
        outcomes: list[object] = []
        waiting = threading.Thread(target=lambda: outcomes.append(waiter.wait("h2-sync", timeout=30)))
        waiting.start()
        deadline = time.monotonic() + 20
        while anyio.run(waiting_in, agent.base_url) < 1:
            assert time.monotonic() < deadline, "the wait never reached the service"
            time.sleep(0.05)
        reviewer.accept("h2-sync", reason="one socket, sync")
        waiting.join(30)
    assert len(outcomes) == 1 and isinstance(outcomes[0], Approved), outcomes
    assert versions == {"HTTP/2"}
