"""The async client against the real service."""

from __future__ import annotations

import anyio
import httpx
import pytest
from conftest import PLAIN_READ, SENSITIVE_READ, WRITE, Service, Tenant

from approvals_client import (
    Allowed,
    ApiError,
    Approved,
    AsyncApprovalsClient,
    Denied,
    Rejected,
    RetryPolicy,
    Status,
    WaitTimeout,
)

pytestmark = pytest.mark.anyio


async def test_every_call(async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient], tenant: Tenant) -> None:
    agent, reviewer = async_clients
    async with agent, reviewer:
        assert isinstance((await agent.submit(PLAIN_READ)).outcome(), Allowed)
        assert isinstance(await agent.submit_and_wait(WRITE), Denied)
        parked = await agent.submit(SENSITIVE_READ, request_id="async-1")
        assert parked.created and parked.approval is not None
        assert (await agent.get("async-1")).status is Status.PENDING
        assert [a.id for a in (await reviewer.list()).items] == ["async-1"]
        assert [a.id async for a in reviewer.list_all()] == ["async-1"]

        results: dict[str, object] = {}
        polls = 0

        async def count_polls(request: httpx.Request) -> None:
            nonlocal polls
            if request.url.path.endswith("/decision"):
                polls += 1

        async with httpx.AsyncClient(event_hooks={"request": [count_polls]}) as http:
            waiter = AsyncApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http)

            async def wait() -> None:
                results["outcome"] = await waiter.wait("async-1", timeout=30, poll_seconds=1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                # Decided once the wait has gone on through more than one long-poll.
                with anyio.fail_after(20):
                    while polls < 2:
                        await anyio.sleep(0.05)
                await reviewer.accept("async-1", reason="async ok")
        outcome = results["outcome"]
        assert isinstance(outcome, Approved) and outcome.reason == "async ok"

        async with anyio.create_task_group() as tg:

            async def reject_when_parked() -> None:
                while not (await reviewer.list()).items:
                    await anyio.sleep(0.05)
                await reviewer.reject("async-2", reason="async no")

            tg.start_soon(reject_when_parked)
            rejected = await agent.submit_and_wait(SENSITIVE_READ, request_id="async-2", timeout=30)
        assert isinstance(rejected, Rejected) and rejected.reason == "async no"

        with pytest.raises(ApiError) as raised:
            await reviewer.accept("async-2")
        assert raised.value.code == "already_decided"

        await agent.submit(SENSITIVE_READ, request_id="async-3")
        with pytest.raises(WaitTimeout):
            await agent.wait("async-3", timeout=1.2, poll_seconds=1)


async def test_live_events(async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient]) -> None:
    agent, reviewer = async_clients
    async with agent, reviewer:
        seen: list = []

        async def watch() -> None:
            async for event in reviewer.events():
                seen.append((event.event, event.data.approval_id))
                if event.event == "decided" and event.data.approval_id == "live":
                    return

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                n = 0
                while not seen:  # park probes until the stream shows one: it is open
                    n += 1
                    await agent.submit(SENSITIVE_READ, request_id=f"probe-{n}")
                    await anyio.sleep(0.2)
                await agent.submit(SENSITIVE_READ, request_id="live")
                await reviewer.reject("live")
        assert [e for e in seen if e[1] == "live"] == [("parked", "live"), ("decided", "live")]


class LoseFirstPollAnswer(httpx.AsyncBaseTransport):
    """A real connection whose first long-poll answer is lost once the service has answered,
    as when a proxy's timeout equals the poll's wait."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.lost == 0 and request.url.path.endswith("/decision"):
            await response.aread()
            await response.aclose()
            self.lost += 1
            raise httpx.ReadError("connection reset (test)", request=request)
        return response


async def test_a_long_poll_cut_off_after_its_wait_is_retried(service: Service, tenant: Tenant) -> None:
    """The wait is the poll's design, not time lost to failures: the retry budget (shorter than
    one wait here) still has room for the retry."""
    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as plain:
        parked = await plain.submit(SENSITIVE_READ)
    transport = LoseFirstPollAnswer()
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=1.0)
    async with httpx.AsyncClient(transport=transport) as http:
        agent = AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name, http=http, retry=budget)
        approval = await agent.poll(parked.request_id, 2)
    assert transport.lost == 1
    assert approval.status is Status.PENDING
