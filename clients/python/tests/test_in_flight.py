"""A full HTTP/2 connection: httpcore opens at most 100 streams on one and puts the next request
on the same connection, where it would wait for a stream with no timeout at all. The client
keeps at most `max_in_flight` (100) requests in flight, and one that finds no slot within its
timeout fails like one that finds no connection in httpx's pool.

Waits (long-polls, live streams) may hold all but a reserve of those slots (a tenth, at least
one): with every slot held by a wait, a submit, a get or a decision found none until its pool
timeout. Over one HTTP/2 connection a call so let through still waits for its answer behind the
idle long-polls (httpcore reads the connection under one lock, each waiter in turn blocking
until something arrives), so what these tests check there is that it goes out at once; over
HTTP/1.1 its answer comes at once too."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
from conftest import PLAIN_READ, SENSITIVE_READ, Tenant
from helpers import until
from test_http2 import waiting_in
from test_wait_failures import approval as approval_json

from approvals_client import (
    NO_RETRY,
    ApiError,
    ApprovalsClient,
    Approved,
    AsyncApprovalsClient,
    Decision,
    RetryPolicy,
    TransportError,
)

STREAMS = 100  # httpcore's streams per HTTP/2 connection, and the client's default max_in_flight
WAIT_SHARE = STREAMS - STREAMS // 10  # what waits may hold of them: the rest is the reserve
TIMEOUT = 2.0  # the client's timeout: each of connect, read, write and the wait for a slot


def is_poll(request: httpx.Request) -> bool:
    return request.url.path.endswith("/decision")


def waiting_for_a_slot(thread: threading.Thread) -> bool:
    """Whether `thread` is blocked in a client's wait for a slot in flight."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    # Innermost `threading.Condition.wait`, under the client's `_in_flight`.
    return bool(names) and names[0] == "wait" and "_in_flight" in names


@pytest.mark.anyio
async def test_waits_beyond_their_share_of_one_connection_time_out(
    async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient], tenant: Tenant
) -> None:
    agent, reviewer = async_clients
    polls = 0
    gone = anyio.Event()  # the get went out

    async def count(request: httpx.Request) -> None:
        nonlocal polls
        polls += is_poll(request)
        if not is_poll(request):
            gone.set()

    # Counted as they go out on this connection: the service's count of long-polls also holds
    # other tests' that have not timed out yet.
    http = httpx.AsyncClient(http1=False, http2=True, event_hooks={"request": [count]})
    async with agent, reviewer, http:
        approval = (await agent.submit(SENSITIVE_READ, request_id="full-async")).approval
        assert approval is not None
        waiter = AsyncApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, timeout=TIMEOUT, retry=NO_RETRY)
        outcomes: list[object] = []

        async def wait() -> None:
            try:
                outcomes.append(await waiter.wait(approval.id, timeout=30))
            except TransportError as error:
                outcomes.append(error)

        got: list[object] = []

        async def get() -> None:
            got.append(await waiter.get(approval.id))

        async with anyio.create_task_group() as tg:
            started = time.monotonic()
            for _ in range(STREAMS):
                tg.start_soon(wait)
            try:
                with anyio.fail_after(20):
                    while polls < WAIT_SHARE or await waiting_in(agent.base_url) < WAIT_SHARE:
                        await anyio.sleep(0.05)
                # The reserve: a call that is no wait goes out at once (its answer comes after
                # the decision, see above).
                tg.start_soon(get)
                with anyio.fail_after(TIMEOUT):
                    await gone.wait()
                # The waits beyond their share found no slot within their pool timeout, and
                # were never sent (no stream to wait for without a timeout).
                with anyio.fail_after(TIMEOUT + 10):
                    while len(outcomes) < STREAMS - WAIT_SHARE:
                        await anyio.sleep(0.05)
                assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 5
                assert all(isinstance(o, TransportError) and "PoolTimeout" in str(o) for o in outcomes), outcomes
            finally:
                await reviewer.accept(approval.id, reason="streams freed")
        assert polls == WAIT_SHARE and len(got) == 1
        assert len(outcomes) == STREAMS and sum(isinstance(o, Approved) for o in outcomes) == WAIT_SHARE, outcomes
        # Every slot was given back: the next calls go through.
        assert (await waiter.get(approval.id)).decided


def test_the_sync_client_bounds_its_waits_in_flight_too(agent: ApprovalsClient, reviewer: ApprovalsClient, tenant: Tenant) -> None:
    polls: list[httpx.Request] = []
    gone = threading.Event()  # the get went out
    # Counted as they go out on this connection (see the async test).
    http = httpx.Client(http1=False, http2=True, event_hooks={"request": [lambda r: polls.append(r) if is_poll(r) else gone.set()]})
    with http:
        approval = agent.submit(SENSITIVE_READ, request_id="full-sync").approval
        assert approval is not None
        waiter = ApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, timeout=TIMEOUT, retry=NO_RETRY)
        outcomes: list[object] = []

        def wait() -> None:
            try:
                outcomes.append(waiter.wait(approval.id, timeout=30))
            except TransportError as error:
                outcomes.append(error)

        waits = [threading.Thread(target=wait) for _ in range(STREAMS)]
        got: list[object] = []
        getter = threading.Thread(target=lambda: got.append(waiter.get(approval.id)))
        started = time.monotonic()
        for thread in waits:
            thread.start()
        try:
            until(lambda: len(polls) >= WAIT_SHARE and anyio.run(waiting_in, agent.base_url) >= WAIT_SHARE, what="the waits at the service")
            # The reserve: a call that is no wait goes out at once (its answer comes after the
            # decision, see above).
            getter.start()
            assert gone.wait(TIMEOUT), "the get found no slot"
            until(lambda: len(outcomes) >= STREAMS - WAIT_SHARE, seconds=TIMEOUT + 10, what="the waits beyond their share")
            assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 5
            assert all(isinstance(o, TransportError) and "PoolTimeout" in str(o) for o in outcomes), outcomes
        finally:
            reviewer.accept(approval.id, reason="streams freed")
            for thread in waits + ([getter] if getter.ident else []):
                thread.join(30)
        assert len(polls) == WAIT_SHARE and len(got) == 1
        assert len(outcomes) == STREAMS and sum(isinstance(o, Approved) for o in outcomes) == WAIT_SHARE, outcomes
        assert waiter.get(approval.id).decided


@pytest.mark.anyio
async def test_a_submit_goes_through_while_waits_hold_every_slot_they_may(
    async_clients: tuple[AsyncApprovalsClient, AsyncApprovalsClient], tenant: Tenant
) -> None:
    agent, reviewer = async_clients
    polls = 0

    async def count(request: httpx.Request) -> None:
        nonlocal polls
        polls += is_poll(request)

    http = httpx.AsyncClient(event_hooks={"request": [count]})
    async with agent, reviewer, http:
        # Two waits on a client of two slots: they used to hold both, and the submit found none.
        waiter = AsyncApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, max_in_flight=2, timeout=10, retry=NO_RETRY)
        approval = (await agent.submit(SENSITIVE_READ)).approval
        assert approval is not None
        outcomes: list[object] = []

        async def wait() -> None:
            outcomes.append(await waiter.wait(approval.id, timeout=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            tg.start_soon(wait)
            try:
                with anyio.fail_after(20):
                    while not polls:
                        await anyio.sleep(0.05)
                    # Each wait now waits on the service or for a slot.
                    await anyio.wait_all_tasks_blocked()
                with anyio.fail_after(5):
                    assert (await waiter.submit(PLAIN_READ)).decision is Decision.ALLOW
            finally:
                await reviewer.accept(approval.id)
    assert len(outcomes) == 2 and all(isinstance(o, Approved) for o in outcomes), outcomes


def test_a_sync_submit_goes_through_while_waits_hold_every_slot_they_may(
    agent: ApprovalsClient, reviewer: ApprovalsClient, tenant: Tenant
) -> None:
    polls: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [lambda r: polls.append(r) if is_poll(r) else None]}) as http:
        waiter = ApprovalsClient(agent.base_url, tenant.agent_token, tenant.name, http=http, max_in_flight=2, timeout=10, retry=NO_RETRY)
        approval = agent.submit(SENSITIVE_READ).approval
        assert approval is not None
        outcomes: list[object] = []
        waits = [threading.Thread(target=lambda: outcomes.append(waiter.wait(approval.id, timeout=30))) for _ in range(2)]
        for thread in waits:
            thread.start()
        try:
            # Each wait has sent its long-poll or waits for a slot.
            until(lambda: len(polls) + sum(map(waiting_for_a_slot, waits)) == 2, what="both waits under way")
            started = time.monotonic()
            assert waiter.submit(PLAIN_READ).decision is Decision.ALLOW
            assert time.monotonic() - started < 5
        finally:
            reviewer.accept(approval.id)
            for thread in waits:
                thread.join(30)
    assert len(outcomes) == 2 and all(isinstance(o, Approved) for o in outcomes), outcomes


def test_waits_and_other_calls_together_stay_within_max_in_flight() -> None:
    """The reserve is part of `max_in_flight`, not beyond it: a wait and a get hold both slots
    of two, and a third call, a wait or not, finds none. The service cannot be made to hold a
    get: an `httpx.MockTransport` holds each answer until told."""
    release = threading.Event()
    entered: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        entered.append(request.url.path)
        release.wait(30)
        return httpx.Response(200, json=approval_json("accepted"))

    http = httpx.Client(transport=httpx.MockTransport(answer))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, max_in_flight=2, timeout=0.5, retry=NO_RETRY)
    held = [
        threading.Thread(target=client.wait, args=("req-1",), kwargs={"timeout": 30}),
        threading.Thread(target=client.get, args=("req-1",)),
    ]
    for thread in held:
        thread.start()
    try:
        until(lambda: len(entered) == 2, what="a wait and a get in flight")
        for extra in (lambda: client.get("req-1"), lambda: client.wait("req-1", timeout=30)):
            with pytest.raises(TransportError, match="PoolTimeout"):
                extra()
        assert len(entered) == 2
    finally:
        release.set()
        for thread in held:
            thread.join(30)
    assert client.get("req-1").decided


def refusing_streams(asked: Callable[[], object]) -> httpx.MockTransport:
    """`/events` answered 503 with a Retry-After of 3 s (`asked` called each time); anything
    else, an accepted approval."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            asked()
            body = {"type": "urn:approvals:problem:backend_unavailable", "title": "x", "status": 503, "code": "backend_unavailable"}
            return httpx.Response(503, json=body, headers={"content-type": "application/problem+json", "retry-after": "3"})
        return httpx.Response(200, json=approval_json("accepted"))

    return httpx.MockTransport(answer)


def test_a_live_stream_waiting_to_reconnect_holds_no_slot() -> None:
    """A live stream refused (503, come back in 3 s) is not open: while it waits to try again
    it holds no slot in flight. It slept inside its slot, and with the waits' share spent (one
    of two here) a wait found none and timed out."""
    asked = threading.Event()
    http = httpx.Client(transport=refusing_streams(asked.set))
    retry = RetryPolicy(max_elapsed=4, initial_backoff=0.01)
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, max_in_flight=2, timeout=0.5, retry=retry)
    ended: list[BaseException] = []

    def stream() -> None:
        try:
            next(client.events())
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            ended.append(error)

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        assert asked.wait(10), "the stream was never asked for"
        # Its own deadline ends before the stream would try again.
        assert isinstance(client.wait("req-1", timeout=2), Approved)
    finally:
        streaming.join(30)
    assert len(ended) == 1 and isinstance(ended[0], ApiError), ended


@pytest.mark.anyio
async def test_an_async_live_stream_waiting_to_reconnect_holds_no_slot() -> None:
    asked = anyio.Event()
    http = httpx.AsyncClient(transport=refusing_streams(asked.set))
    retry = RetryPolicy(max_elapsed=4, initial_backoff=0.01)
    client = AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, max_in_flight=2, timeout=0.5, retry=retry)

    async def stream() -> None:
        with pytest.raises(ApiError):
            await client.events().__anext__()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream)
        with anyio.fail_after(10):
            await asked.wait()
        assert isinstance(await client.wait("req-1", timeout=2), Approved)
    await client.aclose()


def test_max_in_flight_is_at_least_one() -> None:
    for client in (ApprovalsClient, AsyncApprovalsClient):
        with pytest.raises(ValueError, match="max_in_flight"):
            client("http://127.0.0.1:9", "token", "tenant", max_in_flight=0)


@pytest.mark.anyio
async def test_a_wait_cancelled_while_it_waits_for_a_slot_gives_its_share_back() -> None:
    # Two slots, one of them for waits. Other calls hold both; a wait takes the waits' share
    # and waits for a slot, and its caller gives up (a `fail_after`, a cancelled task).
    client = AsyncApprovalsClient("http://127.0.0.1:9", "token", "acme", max_in_flight=2)
    for _ in range(2):
        await client._slots.acquire()
    with anyio.move_on_after(0.1):
        async with client._in_flight(10.0, waiting=True):
            pass
    for _ in range(2):
        client._slots.release()
    # Kept by the cancelled wait, the share would be gone for good: every later wait timed out.
    with anyio.fail_after(2):
        async with client._in_flight(10.0, waiting=True):
            pass
    await client.aclose()
