"""The retry budget (`max_elapsed`) cuts an attempt's timeouts, but never below a floor: an
attempt given a few milliseconds is doomed (and a submit cut off so may leave its approval
parked behind a read timeout), and `RetryPolicy(max_elapsed=0)`, one attempt and no retry,
gave its only attempt timeouts of 0, so every call failed."""

from __future__ import annotations

import httpx
import pytest
from conftest import PLAIN_READ, SENSITIVE_READ, Service, Tenant

from approvals_client import (
    Allowed,
    ApprovalsClient,
    AsyncApprovalsClient,
    RetryPolicy,
    Status,
)
from approvals_client._core import ATTEMPT_FLOOR, attempt_timeout

ONE_ATTEMPT = RetryPolicy(max_elapsed=0)


def phases(timeout: httpx.Timeout | float) -> tuple[float | None, ...]:
    t = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
    return (t.connect, t.read, t.write, t.pool)


def test_a_spent_budget_leaves_an_attempt_the_floor() -> None:
    for left in (0.0, 0.003):
        assert phases(attempt_timeout(35.0, None, left, 0.0)) == (ATTEMPT_FLOOR,) * 4
        # A long-poll's wait comes on top of the floor: its answer comes at the end of the wait.
        assert phases(attempt_timeout(httpx.Timeout(35.0, read=95.0), None, left, 60.0)) == (
            35.0, 60.0 + ATTEMPT_FLOOR, 35.0, 35.0,
        )


def test_the_floor_is_no_longer_than_the_configured_timeout() -> None:
    assert phases(attempt_timeout(0.5, None, 0.0, 0.0)) == (0.5,) * 4
    assert phases(attempt_timeout(httpx.Timeout(0.5, read=10.0), None, 0.0, 0.0)) == (0.5, ATTEMPT_FLOOR, 0.5, 0.5)


def test_a_budget_above_the_floor_still_cuts() -> None:
    assert phases(attempt_timeout(35.0, None, 7.5, 0.0)) == (7.5,) * 4
    assert phases(attempt_timeout(35.0, None, None, 0.0)) == (35.0,) * 4


def test_one_attempt_without_retries_reaches_the_service(service: Service, tenant: Tenant) -> None:
    with ApprovalsClient(service.base_url, tenant.agent_token, tenant.name, retry=ONE_ATTEMPT) as agent:
        parked = agent.submit(SENSITIVE_READ)
        assert parked.created and parked.approval is not None
        assert agent.get(parked.approval.id).status is Status.PENDING
        assert agent.poll(parked.approval.id, 1).status is Status.PENDING
        assert isinstance(agent.submit_and_wait(PLAIN_READ), Allowed)


@pytest.mark.anyio
async def test_and_so_does_the_async_client(service: Service, tenant: Tenant) -> None:
    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name, retry=ONE_ATTEMPT) as agent:
        parked = await agent.submit(SENSITIVE_READ)
        assert parked.created and parked.approval is not None
        assert (await agent.get(parked.approval.id)).status is Status.PENDING
        assert (await agent.poll(parked.approval.id, 1)).status is Status.PENDING
        assert isinstance(await agent.submit_and_wait(PLAIN_READ), Allowed)
