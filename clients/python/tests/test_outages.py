"""A wait outlasts an outage: once the action is parked, a `503` or a refused connection means
"still pending", however long it lasts, not the end of the wait. Before, each poll had the
retry policy's budget (8 attempts, some 10 s) and a Redis restart ended a wait without a
timeout, which the README promised would wait until the approval was decided or expired."""

from __future__ import annotations

import logging
import threading
import time

import anyio
import anyio.to_thread
import httpx
import pytest
from conftest import SENSITIVE_READ, Service
from helpers import until

from approvals_client import ApiError, ApprovalsClient, Approved, AsyncApprovalsClient, RetryPolicy

# A budget an outage of a few seconds outlasts many times: the wait must not depend on it.
SMALL = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2, max_elapsed=2.0)
OUTAGE = 4.0


def test_a_wait_without_timeout_outlasts_a_redis_outage(own_service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="approvals_client")
    t = own_service.tenants[0]
    answered: list[httpx.Response] = []
    http = httpx.Client(event_hooks={"response": [lambda r: answered.append(r) if r.url.path.endswith("/decision") else None]})
    agent = ApprovalsClient(own_service.base_url, t.agent_token, t.name, http=http, retry=SMALL, poll_seconds=1)
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.1, max_backoff=0.5)
    reviewer = ApprovalsClient(own_service.base_url, t.reviewer_token, t.name, retry=patient)
    parked = agent.submit(SENSITIVE_READ, request_id="through-the-outage")
    assert parked.created
    result: dict[str, object] = {}

    def wait() -> None:
        try:
            result["outcome"] = agent.wait("through-the-outage")  # no timeout
        except BaseException as error:  # reported below
            result["error"] = error

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        until(lambda: len(answered) >= 1, what="a first poll answered")  # the wait has read it
        own_service.redis.freeze()
        # The service answers 503 (its Redis calls time out, after a second each) to more
        # polls in a row than the retry policy allows one call.
        until(
            lambda: sum(r.status_code == 503 for r in answered) > 2 * SMALL.max_attempts or bool(result),
            seconds=30,
            what="the outage",
        )
        assert not result, f"the wait ended during the outage: {result}"
        own_service.redis.thaw()
        reviewer.accept("through-the-outage", reason="back again")
        waiter.join(30)
        assert not waiter.is_alive(), "the wait did not see the decision"
        assert "error" not in result, result
        outcome = result["outcome"]
        assert isinstance(outcome, Approved) and outcome.approval.decision_reason == "back again"
    finally:
        if waiter.is_alive():  # ends a wait that did not see the decision
            reviewer.reject("through-the-outage")
        http.close()
        reviewer.close()


def test_a_wait_still_raises_what_no_wait_mends(own_service: Service) -> None:
    """A `404` (or `401`/`403`) is no outage: raised at once, not polled again."""
    t = own_service.tenants[0]
    with ApprovalsClient(own_service.base_url, t.agent_token, t.name, retry=SMALL) as agent:
        parked = agent.submit(SENSITIVE_READ, request_id="known")
        assert parked.approval is not None
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            agent._wait("no-such-approval", None, 1, parked.approval)
    assert raised.value.status == 404 and time.monotonic() - started < 2


@pytest.mark.anyio
async def test_submit_and_wait_outlasts_a_restart_of_the_service(own_service: Service) -> None:
    """The async client, and `submit_and_wait` (so the guard too), through refused
    connections: the service itself is down, then back on the same port."""
    t = own_service.tenants[0]
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.1, max_backoff=0.5)
    agent = AsyncApprovalsClient(own_service.base_url, t.agent_token, t.name, retry=SMALL, poll_seconds=1)
    reviewer = AsyncApprovalsClient(own_service.base_url, t.reviewer_token, t.name, retry=patient)
    result: dict[str, object] = {}

    async def wait() -> None:
        try:
            result["outcome"] = await agent.submit_and_wait(SENSITIVE_READ, request_id="through-a-restart")
        except Exception as error:  # reported below
            result["error"] = error

    async with agent, reviewer, anyio.create_task_group() as tg:
        tg.start_soon(wait)
        with anyio.fail_after(20):
            while not (await reviewer.list()).items:
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(own_service.stop_process)
        await anyio.sleep(OUTAGE)
        assert not result, f"the wait ended during the outage: {result}"
        await anyio.to_thread.run_sync(own_service.start_process)
        await reviewer.accept("through-a-restart", reason="restarted")
        with anyio.fail_after(30):
            while not result:
                await anyio.sleep(0.05)
    assert "error" not in result, result
    outcome = result["outcome"]
    assert isinstance(outcome, Approved) and outcome.approval.decision_reason == "restarted"
