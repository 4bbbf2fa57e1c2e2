"""A full HTTP/2 connection: httpcore opens at most 100 streams on one and puts the next request
on the same connection, where it would wait for a stream with no timeout at all. The client
keeps at most `max_in_flight` (100) requests in flight, and one that finds no slot within its
timeout fails like one that finds no connection in httpx's pool."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
from conftest import SENSITIVE_READ, Tenant
from test_http2 import waiting_in

from approvals_client import NO_RETRY, ApprovalsClient, Approved, AsyncApprovalsClient, TransportError

STREAMS = 100  # httpcore's streams per HTTP/2 connection, and the client's default max_in_flight
TIMEOUT = 2.0  # the client's timeout: each of connect, read, write and the wait for a slot


@pytest.mark.anyio
async def test_a_call_beyond_the_streams_of_one_connection_times_out(
    async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient], tenant: Tenant
) -> None:
    agent, reviewer = async_clients
    sent = 0

    async def count(_request: httpx.Request) -> None:
        nonlocal sent
        sent += 1

    # Counted as they go out on this connection: the service's count of long-polls also holds
    # other tests' that have not timed out yet, and read 100 before all of these were sent.
    http = httpx.AsyncClient(http1=False, http2=True, event_hooks={"request": [count]})
    async with agent, reviewer, http:
        approval = (await agent.submit(SENSITIVE_READ, request_id="full-async")).approval
        assert approval is not None
        waiter = AsyncApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, timeout=TIMEOUT, retry=NO_RETRY)
        outcomes: list[object] = []

        async def wait() -> None:
            outcomes.append(await waiter.wait(approval.id, timeout=30))

        async with anyio.create_task_group() as tg:
            for _ in range(STREAMS):
                tg.start_soon(wait)
            try:
                with anyio.fail_after(20):
                    while sent < STREAMS or await waiting_in(agent.base_url) < STREAMS:
                        await anyio.sleep(0.05)
                started = time.monotonic()
                # Without a bound of the client's own, this call waits for a stream forever.
                with anyio.fail_after(TIMEOUT + 10), pytest.raises(TransportError, match="PoolTimeout"):
                    await waiter.get(approval.id)
                assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 5
            finally:
                await reviewer.accept(approval.id, reason="streams freed")
        assert len(outcomes) == STREAMS and all(isinstance(o, Approved) for o in outcomes), outcomes
        # Every slot was given back: the next calls go through.
        assert (await waiter.get(approval.id)).decided


def test_the_sync_client_bounds_its_calls_in_flight_too(
    agent: ApprovalsClient, reviewer: ApprovalsClient, tenant: Tenant
) -> None:
    sent = []
    # Counted as they go out on this connection (see the async test).
    http = httpx.Client(http1=False, http2=True, event_hooks={"request": [sent.append]})
    with http:
        approval = agent.submit(SENSITIVE_READ, request_id="full-sync").approval
        assert approval is not None
        waiter = ApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, timeout=TIMEOUT, retry=NO_RETRY)
        outcomes: list[object] = []
        waits = [threading.Thread(target=lambda: outcomes.append(waiter.wait(approval.id, timeout=30))) for _ in range(STREAMS)]
        for thread in waits:
            thread.start()
        failures: list[BaseException] = []

        def one_more() -> None:
            try:
                waiter.get(approval.id)
            except BaseException as error:  # reported below
                failures.append(error)

        try:
            deadline = time.monotonic() + 20
            while len(sent) < STREAMS or anyio.run(waiting_in, agent.base_url) < STREAMS:
                assert time.monotonic() < deadline, "the waits never reached the service"
                time.sleep(0.05)
            started = time.monotonic()
            extra = threading.Thread(target=one_more)
            extra.start()
            # Without a bound of the client's own, this call waits for a stream forever.
            extra.join(TIMEOUT + 10)
            blocked = extra.is_alive()
            elapsed = time.monotonic() - started
        finally:
            reviewer.accept(approval.id, reason="streams freed")
            for thread in waits:
                thread.join(30)
        assert not blocked, "the call beyond the connection's streams never timed out"
        assert len(failures) == 1 and isinstance(failures[0], TransportError), failures
        assert "PoolTimeout" in str(failures[0])
        assert TIMEOUT <= elapsed < TIMEOUT + 5
        assert len(outcomes) == STREAMS and all(isinstance(o, Approved) for o in outcomes), outcomes
        assert waiter.get(approval.id).decided


def test_max_in_flight_is_at_least_one() -> None:
    for client in (ApprovalsClient, AsyncApprovalsClient):
        with pytest.raises(ValueError, match="max_in_flight"):
            client("http://127.0.0.1:9", "token", "tenant", max_in_flight=0)
