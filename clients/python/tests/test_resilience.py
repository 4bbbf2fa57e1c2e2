"""Retries that never park twice: Redis restarted under a submit, and an answer lost on the way."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from conftest import SENSITIVE_READ, Service, Tenant, start_service
from helpers import CountingPolls, until

from approvals_client import (
    ApiError,
    ApprovalsClient,
    AsyncApprovalsClient,
    RetryPolicy,
    Status,
    SubmitResponse,
    TransportError,
    WaitTimeout,
)


def test_a_submit_retried_while_redis_restarts_parks_exactly_once(
    own_service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="approvals_client")
    tenant = own_service.tenants[0]
    retry = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.3, max_elapsed=60)
    agent = ApprovalsClient(own_service.base_url, tenant.agent_token, tenant.name, retry=retry)
    reviewer = ApprovalsClient(own_service.base_url, tenant.reviewer_token, tenant.name)

    own_service.redis.stop()
    result: dict[str, object] = {}

    def submit() -> None:
        try:
            result["answer"] = agent.submit(SENSITIVE_READ, request_id="during-outage")
        except BaseException as error:  # reported below
            result["error"] = error

    submitter = threading.Thread(target=submit)
    submitter.start()
    # The service answers 503 while Redis is down; the client keeps retrying.
    until(lambda: sum(" 503; retry" in r.getMessage() for r in caplog.records) >= 3, what="three 503s retried")
    own_service.redis.start()  # the same port, empty
    submitter.join(60)
    assert "error" not in result, result
    answer = result["answer"]
    assert isinstance(answer, SubmitResponse) and answer.created
    assert answer.approval is not None and answer.approval.id == "during-outage"

    pending = reviewer.list(Status.PENDING).items
    assert [a.id for a in pending] == ["during-outage"]
    # Submitting again (an agent that restarted) finds it; still one approval.
    again = agent.submit(SENSITIVE_READ, request_id="during-outage")
    assert not again.created and [a.id for a in reviewer.list().items] == ["during-outage"]
    agent.close()
    reviewer.close()


def test_a_503_that_outlasts_the_policy_raises_backend_unavailable(own_service: Service) -> None:
    tenant = own_service.tenants[0]
    own_service.redis.stop()
    quick = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with ApprovalsClient(own_service.base_url, tenant.agent_token, tenant.name, retry=quick) as agent:
        with pytest.raises(ApiError) as raised:
            agent.submit(SENSITIVE_READ)
    assert (raised.value.status, raised.value.code, raised.value.attempts) == (503, "backend_unavailable", 3)


class LoseFirstAnswer(httpx.BaseTransport):
    """A real connection to the service whose first answer to a matching call is lost after
    the service has acted on it, as when a network breaks under a response."""

    def __init__(self, method: str, path_suffix: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.method, self.suffix = method, path_suffix
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.lost == 0 and request.method == self.method and request.url.path.endswith(self.suffix):
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadError("connection reset (test)", request=request)
        return response


def test_a_retry_after_a_lost_answer_finds_the_approval_instead_of_parking_again(service: Service, tenant: object) -> None:
    t = tenant
    transport = LoseFirstAnswer("POST", "/approvals")
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    http = httpx.Client(transport=transport)
    agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=fast)  # type: ignore[attr-defined]
    with ApprovalsClient(service.base_url, t.reviewer_token, t.name) as reviewer:  # type: ignore[attr-defined]
        answer = agent.submit(SENSITIVE_READ)  # no request_id: the client makes one, once
        assert transport.lost == 1
        # The first attempt parked it; the retry was told so (200, not 201).
        assert not answer.created and answer.approval is not None and answer.approval.id == answer.request_id
        assert [a.id for a in reviewer.list().items] == [answer.request_id]

        # A decision whose answer is lost: the retry answers with the record, not already_decided.
        lossy_reviewer_http = httpx.Client(transport=LoseFirstAnswer("POST", "/accept"))
        lossy = ApprovalsClient(service.base_url, t.reviewer_token, t.name, http=lossy_reviewer_http, retry=fast)  # type: ignore[attr-defined]
        decided = lossy.accept(answer.request_id, reason="once")
        assert decided.status is Status.ACCEPTED and decided.decision_reason == "once"
        lossy_reviewer_http.close()
    http.close()


def test_a_token_at_its_long_poll_limit_waits_its_turn_instead_of_failing(tmp_path: Path) -> None:
    """With one long-poll per token allowed, a second wait is answered `429
    too_many_requests`; the client retries after `Retry-After` and gets its answer once the
    first long-poll has ended."""
    service = start_service(tmp_path, ["busy"], limits={"max_long_polls_per_caller": 1})
    tenant = service.tenants[0]
    try:
        with ApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:
            approval = agent.submit(SENSITIVE_READ).approval
            assert approval is not None
            url = f"{service.base_url}/v1/tenants/busy/approvals/{approval.id}/decision"
            headers = {"authorization": f"Bearer {tenant.agent_token}"}
            first = threading.Thread(
                target=lambda: httpx.get(url, params={"wait_seconds": 2}, headers=headers, timeout=10)
            )
            first.start()
            until(lambda: "approvals_long_polls_in_flight 1" in httpx.get(f"{service.base_url}/metrics").text)
            refused = httpx.get(url, params={"wait_seconds": 0}, headers=headers, timeout=10)
            assert (refused.status_code, refused.json()["code"]) == (429, "too_many_requests")
            # The client's own call waits for the first long-poll to end, then answers.
            with ApprovalsClient(service.base_url, tenant.reviewer_token, tenant.name) as reviewer:
                answer = agent.poll(approval.id, 0)
                assert answer.status == Status.PENDING
                first.join()
                reviewer.accept(approval.id, reason="fine")
            assert agent.poll(approval.id, 0).status == Status.ACCEPTED
    finally:
        service.stop()


def test_a_long_poll_cut_off_after_its_wait_is_retried(service: Service, tenant: object) -> None:
    """A proxy whose timeout equals the poll's wait cuts it just as the wait ends: the wait is
    the poll's design, not time lost to failures, so the retry budget still has room."""
    t = tenant
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent:  # type: ignore[attr-defined]
        parked = agent.submit(SENSITIVE_READ)
    transport = LoseFirstAnswer("GET", "/decision")
    # A budget shorter than one wait: before, the first cut-off poll was never retried.
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=1.0)
    with httpx.Client(transport=transport) as http:
        agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=budget)  # type: ignore[attr-defined]
        approval = agent.poll(parked.request_id, 2)
    assert transport.lost == 1
    assert approval.status is Status.PENDING


def test_a_wait_is_bounded_by_its_timeout_across_retries(service: Service, tenant: object) -> None:
    """A poll lost after its wait is retried asking only for what is left of the caller's
    timeout: the wait ends at the timeout (WaitTimeout), not a whole poll later."""
    t = tenant
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent:  # type: ignore[attr-defined]
        parked = agent.submit(SENSITIVE_READ)

    class Recording(LoseFirstAnswer):
        def __init__(self) -> None:
            super().__init__("GET", "/decision")
            self.asked: list[int] = []

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/decision"):
                self.asked.append(int(request.url.params["wait_seconds"]))
            return super().handle_request(request)

    transport = Recording()
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    with httpx.Client(transport=transport) as http:
        agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=fast)  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            agent.wait(parked.request_id, timeout=4, poll_seconds=3)
        took = time.monotonic() - started
    assert transport.lost == 1
    assert transport.asked[0] == 3 and all(asked <= 1 for asked in transport.asked[1:]), transport.asked
    assert took < 5.5, f"the wait ran {took:.1f} s past a 4 s timeout"


class BreakStreamOnce(httpx.BaseTransport):
    """A real connection to the service whose live stream breaks once, at its first chunk
    after `armed` is set, as when an instance is restarted under a long-running stream."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.armed = threading.Event()
        self.broken = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        outer = self

        class Breaking(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in response.stream:
                    if outer.armed.is_set() and outer.broken == 0:
                        outer.broken += 1
                        raise httpx.ReadError("connection reset (test)", request=request)
                    yield chunk

            def close(self) -> None:
                response.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Breaking(), request=request)


def watch_two_events(reviewer: ApprovalsClient) -> tuple[threading.Thread, list[str], list[BaseException]]:
    """Follows `reviewer`'s live events on a thread of its own until two have come: the
    thread, the approval ids seen, and what ended the stream early. From the start of the
    audit, since the first event may come before the stream opens."""
    got: list[str] = []
    failed: list[BaseException] = []

    def watch() -> None:
        try:
            for event in reviewer.events(last_event_id="0-0"):
                got.append(event.data.approval_id)
                if len(got) == 2:
                    return
        except BaseException as error:  # reported by the test
            failed.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher, got, failed


def test_a_live_stream_that_breaks_after_a_long_run_reconnects(service: Service, tenant: object) -> None:
    """The retry budget counts from the break, not from when the stream first opened."""
    t = tenant
    transport = BreakStreamOnce()
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=1.0)
    http = httpx.Client(transport=transport)
    reviewer = ApprovalsClient(service.base_url, t.reviewer_token, t.name, http=http, retry=budget)  # type: ignore[attr-defined]
    watcher, got, failed = watch_two_events(reviewer)
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent:  # type: ignore[attr-defined]
        agent.submit(SENSITIVE_READ, request_id="before-the-break")
        until(lambda: got == ["before-the-break"] or bool(failed), what="the first event")
        # The stream has now run longer than the whole retry budget.
        time.sleep(1.2)
        transport.armed.set()
        agent.submit(SENSITIVE_READ, request_id="after-the-break")
        watcher.join(30)
    http.close()
    assert not failed, failed
    assert transport.broken == 1
    assert got == ["before-the-break", "after-the-break"]


def test_the_last_second_of_a_wait_is_waited_out_not_spun(service: Service, tenant: object) -> None:
    """Under a second before the deadline a poll would ask for 0 s, which answers at once:
    the client waits that time out and looks once more, instead of asking again and again."""
    t = tenant
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent:  # type: ignore[attr-defined]
        parked = agent.submit(SENSITIVE_READ)

    transport = CountingPolls()
    with httpx.Client(transport=transport) as http:
        agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http)  # type: ignore[attr-defined]
        with pytest.raises(WaitTimeout):
            agent.wait(parked.request_id, timeout=1.5, poll_seconds=1)
    # A 1 s poll, then the last half second waited out and one look at its end.
    assert transport.polls <= 3, transport.polls


def test_a_live_stream_outlasts_an_outage_longer_than_its_retry_budget(
    own_service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Once open, a live stream reconnects through an outage of any length (as a browser's
    EventSource does): a reviewer's dashboard used to lose its feed, with an exception, to a
    Redis restart that took longer than the retry policy's budget."""
    caplog.set_level(logging.INFO, logger="approvals_client")
    t = own_service.tenants[0]
    budget = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_elapsed=0.5)
    reviewer = ApprovalsClient(own_service.base_url, t.reviewer_token, t.name, retry=budget)
    watcher, got, failed = watch_two_events(reviewer)
    with ApprovalsClient(own_service.base_url, t.agent_token, t.name) as agent:
        submitted = agent.submit(SENSITIVE_READ, request_id="before-the-outage")
        assert submitted.created
        until(lambda: got == ["before-the-outage"] or bool(failed), what="the first event")
        own_service.redis.stop()
        # Reconnects refused (503) for longer than the whole retry budget.
        until(
            lambda: sum(" 503; reconnect" in r.getMessage() for r in caplog.records) >= 8 or bool(failed),
            what="reconnects past the retry budget",
        )
        own_service.redis.start()
        retry = RetryPolicy(max_attempts=100, initial_backoff=0.1, max_backoff=0.5)
        with ApprovalsClient(own_service.base_url, t.agent_token, t.name, retry=retry) as patient:
            patient.submit(SENSITIVE_READ, request_id="after-the-outage")
        watcher.join(30)
    assert not failed, failed
    assert got == ["before-the-outage", "after-the-outage"]


class BreakForGood(httpx.BaseTransport):
    """A real connection to the service that breaks for good at the first call to `suffix`:
    that call reaches the service and acts, its answer is lost, and nothing connects after."""

    def __init__(self, method: str, suffix: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.method, self.suffix = method, suffix
        self.broken = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.broken:
            raise httpx.ConnectError("connection refused (test)", request=request)
        response = self.inner.handle_request(request)
        if request.method == self.method and request.url.path.endswith(self.suffix):
            response.read()
            response.close()
            self.broken = True
            raise httpx.ReadError("connection reset (test)", request=request)
        return response


class AsyncBreakForGood(httpx.AsyncBaseTransport):
    """`BreakForGood` for the async client."""

    def __init__(self, method: str, suffix: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.method, self.suffix = method, suffix
        self.broken = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.broken:
            raise httpx.ConnectError("connection refused (test)", request=request)
        response = await self.inner.handle_async_request(request)
        if request.method == self.method and request.url.path.endswith(self.suffix):
            await response.aread()
            await response.aclose()
            self.broken = True
            raise httpx.ReadError("connection reset (test)", request=request)
        return response


QUICK = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


def test_a_failed_submit_names_its_request_id_and_a_failed_wait_its_approval(service: Service, tenant: Tenant) -> None:
    """Without them a caller that tries again parks a second approval next to the one the
    lost attempt parked."""
    t = tenant
    with httpx.Client(transport=BreakForGood("POST", "/approvals")) as http:
        agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=QUICK)
        with pytest.raises(TransportError) as raised:
            agent.submit(SENSITIVE_READ)  # the request id is made here
    request_id = raised.value.request_id
    assert request_id and raised.value.approval_id is None
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent, ApprovalsClient(
        service.base_url, t.reviewer_token, t.name
    ) as reviewer:
        again = agent.submit(SENSITIVE_READ, request_id=request_id)
        assert not again.created and [a.id for a in reviewer.list().items] == [request_id]

    with httpx.Client(transport=BreakForGood("GET", "/decision")) as http:
        agent = ApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=QUICK, poll_seconds=1)
        with pytest.raises(WaitTimeout) as timed_out:
            # Parked, the wait treats the lost service as an outage until its deadline, which
            # then passed with the approval pending as far as anyone knows.
            agent.submit_and_wait(SENSITIVE_READ, request_id="parked-then-lost", timeout=3)
    assert (timed_out.value.request_id, timed_out.value.approval_id) == ("parked-then-lost", "parked-then-lost")
    assert isinstance(timed_out.value.__cause__, TransportError)


@pytest.mark.anyio
async def test_the_async_client_names_them_too(service: Service, tenant: Tenant) -> None:
    t = tenant
    async with httpx.AsyncClient(transport=AsyncBreakForGood("POST", "/approvals")) as http:
        agent = AsyncApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=QUICK)
        with pytest.raises(TransportError) as raised:
            await agent.submit_and_wait(SENSITIVE_READ, timeout=30)
    request_id = raised.value.request_id
    assert request_id and raised.value.approval_id is None
    async with AsyncApprovalsClient(service.base_url, t.agent_token, t.name) as agent:
        assert not (await agent.submit(SENSITIVE_READ, request_id=request_id)).created

    async with httpx.AsyncClient(transport=AsyncBreakForGood("GET", "/decision")) as http:
        agent = AsyncApprovalsClient(service.base_url, t.agent_token, t.name, http=http, retry=QUICK, poll_seconds=1)
        with pytest.raises(WaitTimeout) as timed_out:
            await agent.submit_and_wait(SENSITIVE_READ, request_id="async-parked-then-lost", timeout=3)
    assert (timed_out.value.request_id, timed_out.value.approval_id) == ("async-parked-then-lost", "async-parked-then-lost")
    assert isinstance(timed_out.value.__cause__, TransportError)


def refusal(request: httpx.Request, retry_after: str) -> httpx.Response:
    """The service's `503` (as a proxy in front passes it on) with a `Retry-After` of its own
    choosing."""
    body = {"type": "urn:approvals:problem:backend_unavailable", "title": "Unavailable", "status": 503, "detail": "later", "code": "backend_unavailable"}
    headers = {"retry-after": retry_after, "content-type": "application/problem+json"}
    return httpx.Response(503, json=body, headers=headers, request=request)


class RefuseTheReconnect(BreakStreamOnce):
    """`BreakStreamOnce`, whose first reconnect after the break a proxy answers `503` with
    `retry_after`."""

    def __init__(self, retry_after: str) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and self.broken and not self.refused:
            self.refused += 1
            return refusal(request, self.retry_after)
        return super().handle_request(request)


@pytest.mark.parametrize(
    ("retry_after", "cap"),
    [
        # `inf` raised OverflowError from time.sleep and ended the stream.
        ("inf", {}),
        # A day was slept; the policy's cap (5 minutes by default) bounds it.
        ("86400", {"max_retry_after": 0.5}),
    ],
)
def test_a_live_stream_bounds_the_retry_after_it_is_told(
    service: Service, tenant: Tenant, retry_after: str, cap: dict[str, float]
) -> None:
    t = tenant
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, **cap)
    transport = RefuseTheReconnect(retry_after)
    http = httpx.Client(transport=transport)
    reviewer = ApprovalsClient(service.base_url, t.reviewer_token, t.name, http=http, retry=budget)
    watcher, got, failed = watch_two_events(reviewer)
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent:
        agent.submit(SENSITIVE_READ, request_id="before-the-refusal")
        until(lambda: got == ["before-the-refusal"] or bool(failed), what="the first event")
        transport.armed.set()
        agent.submit(SENSITIVE_READ, request_id="after-the-refusal")
        watcher.join(20)
    http.close()
    assert not failed, failed
    assert not watcher.is_alive(), "the stream is still sleeping out the Retry-After"
    assert transport.refused == 1
    assert got == ["before-the-refusal", "after-the-refusal"]


class AsyncRefuseTheReconnect(httpx.AsyncBaseTransport):
    """`RefuseTheReconnect` for the async client: the first stream breaks once `armed`, and
    a proxy answers the reconnect after the break `503` with `Retry-After: inf`."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.armed = threading.Event()
        self.broken = 0
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/events"):
            return await self.inner.handle_async_request(request)
        if self.broken and not self.refused:
            self.refused += 1
            return refusal(request, "inf")
        response = await self.inner.handle_async_request(request)
        outer = self

        class Breaking(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in response.stream:  # type: ignore[union-attr]
                    if outer.armed.is_set() and outer.broken == 0:
                        outer.broken += 1
                        raise httpx.ReadError("connection reset (test)", request=request)
                    yield chunk

            async def aclose(self) -> None:
                await response.aclose()

        return httpx.Response(response.status_code, headers=response.headers, stream=Breaking(), request=request)


@pytest.mark.anyio
async def test_the_async_live_stream_refuses_an_endless_retry_after(service: Service, tenant: Tenant) -> None:
    # `anyio.sleep(inf)` never returned: the stream hung, silently, for good.
    t = tenant
    transport = AsyncRefuseTheReconnect()
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    got: list[str] = []
    async with httpx.AsyncClient(transport=transport) as http, AsyncApprovalsClient(
        service.base_url, t.agent_token, t.name
    ) as agent:
        reviewer = AsyncApprovalsClient(service.base_url, t.reviewer_token, t.name, http=http, retry=budget)

        async def watch() -> None:
            async for event in reviewer.events(last_event_id="0-0"):
                got.append(event.data.approval_id)
                if len(got) == 2:
                    return

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await agent.submit(SENSITIVE_READ, request_id="before-the-refusal")
                while got != ["before-the-refusal"]:
                    await anyio.sleep(0.05)
                transport.armed.set()
                await agent.submit(SENSITIVE_READ, request_id="after-the-refusal")
    assert transport.refused == 1
    assert got == ["before-the-refusal", "after-the-refusal"]
