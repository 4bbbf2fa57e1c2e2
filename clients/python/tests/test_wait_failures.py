"""Which failures a wait that has read its approval waits out, and which it raises at once.

Waited out: what the retry policy retries too (`408`, `502`, `503`, `504`, `429
too_many_requests`, a proxy's `429` without the service's problem, a dropped connection).
Raised at once: everything else, e.g. `500 internal` (a corrupt record, which no retry mends)
and `429 too_many_pending`/`too_many_streams` (waiting on people, not on a retry). Before, a
wait treated every `5xx` and every `429` as "still pending" and polled silently (at INFO)
until the approval's `expires_at` plus a minute: a day by default.

A client whose retry policy allows no retry (`NO_RETRY`) waits out no outage either.

The service cannot be made to answer these on demand: an `httpx.MockTransport` answers."""

from __future__ import annotations

import datetime
import email.utils
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from approvals_client import (
    NO_RETRY,
    ApiError,
    Approval,
    ApprovalsClient,
    ApprovalsError,
    Approved,
    AsyncApprovalsClient,
    ProtocolError,
    RetryPolicy,
    Status,
    TransportError,
    WaitTimeout,
)

QUICK = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
Answer = Callable[[httpx.Request], httpx.Response]
# Long enough that a wait polling through the failure (before the fix) is told apart from one
# that raised at once.
TIMEOUT = 3.0


def approval(status: str) -> dict[str, Any]:
    now = time.time()

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    record: dict[str, Any] = {
        "id": "req-1", "tenant": "acme", "status": status, "agent_id": "agent", "submitted_by": "agent",
        "action": {"type": "document_read"}, "context": {}, "reasons": [], "policy_version": "v1",
        "submitted_at": iso(now), "expires_at": iso(now + 86_400),
    }
    if status != "pending":
        record.update(decided_at=iso(now), decided_by="alice", decision_reason="fine")
    return record


def pending(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=approval("pending"))


def accepted(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=approval("accepted"))


def problem(status: int, code: str) -> Answer:
    body = {"type": f"urn:approvals:problem:{code}", "title": code, "status": status, "detail": code, "code": code}
    return lambda _: httpx.Response(status, json=body, headers={"content-type": "application/problem+json", "retry-after": "0"})


def proxy_page(status: int) -> Answer:
    page = f"<html><body><h1>{status}</h1>nginx</body></html>".encode()
    return lambda _: httpx.Response(status, headers={"content-type": "text/html"}, content=page)


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset (test)", request=request)


class Script:
    """Answers the first poll with `first`, then `failure` `times` times (None: forever), then
    `last`; counts the calls."""

    def __init__(self, failure: Answer, times: int | None = None, first: Answer = pending, last: Answer = accepted) -> None:
        self.failure, self.times, self.first, self.last = failure, times, first, last
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            return self.first(request)
        if self.times is None or self.calls <= 1 + self.times:
            return self.failure(request)
        return self.last(request)


NOT_AN_OUTAGE = {
    "500 internal": (problem(500, "internal"), ApiError),
    "429 too_many_pending": (problem(429, "too_many_pending"), ApiError),
    "429 too_many_streams": (problem(429, "too_many_streams"), ApiError),
    "a proxy's 500": (proxy_page(500), ProtocolError),
    "501 from a proxy": (proxy_page(501), ProtocolError),
}

AN_OUTAGE = {
    "503 backend_unavailable": problem(503, "backend_unavailable"),
    "408 request_timeout": problem(408, "request_timeout"),
    "429 too_many_requests": problem(429, "too_many_requests"),
    "a proxy's 429": proxy_page(429),
    "a proxy's 502": proxy_page(502),
    "a proxy's 504": proxy_page(504),
    "a reset connection": reset,
}


def sync_client(script: Script, retry: RetryPolicy = QUICK) -> ApprovalsClient:
    http = httpx.Client(transport=httpx.MockTransport(script))
    return ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=retry, poll_seconds=1)


def async_client(script: Script, retry: RetryPolicy = QUICK) -> AsyncApprovalsClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=retry, poll_seconds=1)


@pytest.mark.parametrize("name", NOT_AN_OUTAGE)
def test_a_failure_no_retry_mends_ends_the_wait_at_once(name: str) -> None:
    answer, kind = NOT_AN_OUTAGE[name]
    script = Script(answer)
    started = time.monotonic()
    with pytest.raises(kind) as raised:
        sync_client(script).wait("req-1", timeout=TIMEOUT)
    assert time.monotonic() - started < 1.0
    assert script.calls == 2, "polled again after a failure no retry mends"
    assert raised.value.status == int(name.split("'s ")[-1].split()[0])  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("name", NOT_AN_OUTAGE)
async def test_the_async_wait_ends_at_once_too(name: str) -> None:
    answer, kind = NOT_AN_OUTAGE[name]
    script = Script(answer)
    started = time.monotonic()
    async with async_client(script) as client:
        with pytest.raises(kind):
            await client.wait("req-1", timeout=TIMEOUT)
    assert time.monotonic() - started < 1.0
    assert script.calls == 2, "polled again after a failure no retry mends"


@pytest.mark.parametrize("name", AN_OUTAGE)
def test_an_outage_is_waited_out_and_warned_about_once(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="approvals_client")
    # More failures in a row than the policy allows one poll: the wait, not the poll, outlasts them.
    script = Script(AN_OUTAGE[name], times=3 * QUICK.max_attempts)
    outcome = sync_client(script).wait("req-1", timeout=30)
    assert isinstance(outcome, Approved)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "poll again" in warnings[0].getMessage()


@pytest.mark.anyio
@pytest.mark.parametrize("name", AN_OUTAGE)
async def test_the_async_wait_outlasts_it_alike(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="approvals_client")
    script = Script(AN_OUTAGE[name], times=3 * QUICK.max_attempts)
    async with async_client(script) as client:
        outcome = await client.wait("req-1", timeout=30)
    assert isinstance(outcome, Approved)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_each_outage_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A poll that answers between two outages ends the first: the second is warned about too."""
    caplog.set_level(logging.DEBUG, logger="approvals_client")
    unavailable = problem(503, "backend_unavailable")
    # Two 503s per failed poll (QUICK's two attempts), two failed polls per outage.
    calls = iter([pending] + [unavailable] * 4 + [pending] + [unavailable] * 4 + [accepted])
    http = httpx.Client(transport=httpx.MockTransport(lambda request: next(calls)(request)))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK, poll_seconds=1)
    outcome = client.wait("req-1", timeout=30)
    assert isinstance(outcome, Approved)
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) == 2


def test_no_retry_waits_out_no_outage() -> None:
    script = Script(problem(503, "backend_unavailable"))
    started = time.monotonic()
    with pytest.raises(ApiError) as raised:
        sync_client(script, retry=NO_RETRY).wait("req-1", timeout=TIMEOUT)
    assert raised.value.status == 503 and raised.value.attempts == 1
    assert script.calls == 2 and time.monotonic() - started < 1.0


def test_no_retry_fails_submit_and_wait_on_the_first_failure_too() -> None:
    """The guard's path: a submit that parks, then a wait with no retries."""
    parked = {"decision": "require_approval", "reasons": [], "policy_version": "v1", "approval": approval("pending")}
    answers: list[Answer] = [lambda _: httpx.Response(201, json=parked), reset]
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answers[min(len(calls), len(answers)) - 1](request)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=NO_RETRY, poll_seconds=1)
    started = time.monotonic()
    with pytest.raises(ApprovalsError) as raised:
        client.submit_and_wait({"type": "document_read"}, timeout=TIMEOUT)
    assert len(calls) == 2 and time.monotonic() - started < 1.0
    assert raised.value.approval_id == "req-1"


@pytest.mark.anyio
async def test_nor_does_the_async_client_with_no_retry() -> None:
    script = Script(problem(503, "backend_unavailable"))
    started = time.monotonic()
    async with async_client(script, retry=NO_RETRY) as client:
        with pytest.raises(ApiError) as raised:
            await client.wait("req-1", timeout=TIMEOUT)
    assert raised.value.status == 503
    assert script.calls == 2 and time.monotonic() - started < 1.0


@pytest.mark.parametrize("policy", [RetryPolicy(max_elapsed=0), RetryPolicy(max_attempts=0)])
def test_a_policy_that_allows_no_retry_is_told_apart(policy: RetryPolicy) -> None:
    assert not policy.retries and not NO_RETRY.retries
    assert RetryPolicy().retries and RetryPolicy(max_elapsed=None).retries


def test_a_wait_given_its_approval_waits_out_an_outage_from_its_first_poll() -> None:
    """`wait` after `submit` could not say the approval exists: an outage during its first poll,
    longer than the retry policy, ended it, though `submit_and_wait` would have waited it out."""
    unavailable = AN_OUTAGE["503 backend_unavailable"]
    outage = 3 * QUICK.max_attempts  # failed attempts in a row, from the first
    with pytest.raises(ApiError):
        sync_client(Script(unavailable, times=outage, first=unavailable)).wait("req-1", timeout=30)
    known = Approval.from_json(approval("pending"))
    outcome = sync_client(Script(unavailable, times=outage, first=unavailable)).wait("req-1", timeout=30, approval=known)
    assert isinstance(outcome, Approved)
    with pytest.raises(ValueError, match="req-2"):
        sync_client(Script(unavailable)).wait("req-2", approval=known)


@pytest.mark.anyio
async def test_the_async_wait_takes_its_approval_too() -> None:
    unavailable = AN_OUTAGE["503 backend_unavailable"]
    known = Approval.from_json(approval("pending"))
    async with async_client(Script(unavailable, times=3 * QUICK.max_attempts, first=unavailable)) as client:
        outcome = await client.wait("req-1", timeout=30, approval=known)
        assert isinstance(outcome, Approved)
        with pytest.raises(ValueError, match="req-2"):
            await client.wait("req-2", approval=known)


def test_an_outage_past_the_callers_timeout_is_a_wait_timeout() -> None:
    """The caller's deadline passed while the approval was, as far as anyone knows, pending:
    `WaitTimeout`, as a pending answer at the deadline would be, so that the guard's
    `on_refused` answers it. The outage's `503` ended the agent's run instead."""
    script = Script(problem(503, "backend_unavailable"))  # from the second poll on, for good
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        sync_client(script).wait("req-1", timeout=1.5)
    assert raised.value.approval.status is Status.PENDING and raised.value.approval.id == "req-1"
    assert isinstance(raised.value.__cause__, ApiError) and raised.value.__cause__.status == 503
    assert time.monotonic() - started < 1.5 + 1.0


@pytest.mark.anyio
async def test_the_async_wait_times_out_through_an_outage_alike() -> None:
    script = Script(reset)
    async with async_client(script) as client:
        with pytest.raises(WaitTimeout) as raised:
            await client.wait("req-1", timeout=1.5)
    assert raised.value.approval.status is Status.PENDING
    assert isinstance(raised.value.__cause__, TransportError)


def test_an_outage_past_the_approvals_expiry_is_still_the_outages() -> None:
    """A wait without a timeout ends an outage `EXPIRY_GRACE` after the approval's expiry with
    the outage's error: nobody's deadline passed, the service could not say what became of it."""
    just_expired = approval("pending")
    # The outage outlasts its grace in two seconds; a pending answer then is not yet stale.
    just_expired["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 58))
    script = Script(problem(503, "backend_unavailable"), first=lambda _: httpx.Response(200, json=just_expired))
    with pytest.raises(ApiError) as raised:
        sync_client(script).wait("req-1")
    assert raised.value.status == 503


def stale_pending(_: httpx.Request) -> httpx.Response:
    record = approval("pending")
    record["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    return httpx.Response(200, json=record)


def test_an_approval_answered_pending_long_past_its_expiry_ends_the_wait() -> None:
    """A service that answers `pending` an hour past `expires_at` (its clock is off, or it
    cannot record expiries) does not hold a wait without a timeout for ever: `WaitTimeout`,
    the approval as answered."""
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        sync_client(Script(stale_pending, first=stale_pending)).wait("req-1")
    assert raised.value.approval.status is Status.PENDING
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_the_async_wait_ends_alike() -> None:
    async with async_client(Script(stale_pending, first=stale_pending)) as client:
        with pytest.raises(WaitTimeout):
            await client.wait("req-1")


def test_a_problem_whose_record_cannot_be_read_keeps_its_code() -> None:
    """A `409 already_decided` carrying a record of a status this client does not know (a
    later service's) is still `ApiError` `already_decided`, without the record: it was a
    `ProtocolError`, and the code that says what happened was lost."""
    record = approval("accepted")
    record["status"] = "withdrawn"
    body = {"type": "urn:approvals:problem:already_decided", "title": "Already decided", "status": 409, "detail": "decided", "code": "already_decided", "approval": record}
    answer = httpx.Response(409, json=body, headers={"content-type": "application/problem+json"})
    http = httpx.Client(transport=httpx.MockTransport(lambda _: answer))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK)
    with pytest.raises(ApiError) as raised:
        client.accept("req-1")
    assert raised.value.code == "already_decided" and raised.value.status == 409
    assert raised.value.approval is None


def test_a_problem_whose_record_is_not_an_object_keeps_its_code() -> None:
    """A `409 already_decided` whose `approval` is not an object (a gateway's rewrite, a later
    service) is `ApiError` `already_decided` without the record: it was a bare
    `AttributeError`, which no caller's `except ApprovalsError` saw."""
    body = {"type": "urn:approvals:problem:already_decided", "title": "Already decided", "status": 409, "detail": "decided", "code": "already_decided", "approval": "req-1"}
    answer = httpx.Response(409, json=body, headers={"content-type": "application/problem+json"})
    http = httpx.Client(transport=httpx.MockTransport(lambda _: answer))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK)
    with pytest.raises(ApiError) as raised:
        client.accept("req-1")
    assert raised.value.code == "already_decided" and raised.value.approval is None


class Answered:
    """Answers every poll pending at once, as a draining instance (or a proxy) does; counts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, _: httpx.Request) -> httpx.Response:
        self.calls += 1
        return pending(_)


def test_a_wait_answered_at_once_pauses_between_polls() -> None:
    """One-second polls answered pending at once (and the last seconds of any wait, which ask
    for one) pause between polls: they were asked again at once, about 3,000 a second."""
    answered = Answered()
    http = httpx.Client(transport=httpx.MockTransport(answered))
    client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK, poll_seconds=1)
    with pytest.raises(WaitTimeout):
        client.wait("req-1", timeout=3)
    assert answered.calls <= 10, f"{answered.calls} polls in 3 s"


@pytest.mark.anyio
async def test_the_async_wait_pauses_alike() -> None:
    answered = Answered()
    http = httpx.AsyncClient(transport=httpx.MockTransport(answered))
    async with AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK, poll_seconds=1) as client:
        with pytest.raises(WaitTimeout):
            await client.wait("req-1", timeout=3)
    assert answered.calls <= 10, f"{answered.calls} polls in 3 s"


def test_an_infinite_timeout_waits_without_a_deadline_and_nan_is_refused() -> None:
    """`timeout=math.inf` is "no limit", as None is (it raised `OverflowError`); NaN, which no
    deadline could end, is a `ValueError` that says so."""
    import math

    client = sync_client(Script(accepted, first=pending))
    assert isinstance(client.wait("req-1", timeout=math.inf), Approved)
    with pytest.raises(ValueError, match="NaN"):
        client.wait("req-1", timeout=math.nan)


def lapsing(_: httpx.Request) -> httpx.Response:
    """Pending, its expiry 58 s ago: the wait's grace for an outage ends in 2 s."""
    expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 58))
    return httpx.Response(200, json={**approval("pending"), "expires_at": expired})


RETRY_FOR_EVER = RetryPolicy(max_elapsed=None, initial_backoff=0.01, max_backoff=0.05)


def test_an_outage_ends_a_wait_without_a_timeout_at_the_expiry_grace_even_retrying_for_ever() -> None:
    """A wait without a timeout raises an outage's error a minute past the approval's expiry,
    however long the client's retry policy would retry one call: the poll's own retries went
    on (for ever with `max_elapsed=None`), and the agent and its guarded tool hung."""
    script = Script(reset, first=lapsing)
    client = sync_client(script, RETRY_FOR_EVER)
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            client.wait("req-1")
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            raised.append(error)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    waiting.join(10)
    still_waiting = waiting.is_alive()
    script.times = 0  # answered at last, to end a wait that hung
    waiting.join(10)
    assert not still_waiting, "the wait went on past the expiry's grace"
    assert len(raised) == 1 and isinstance(raised[0], TransportError), raised


@pytest.mark.anyio
async def test_the_async_wait_ends_its_outage_at_the_expiry_grace_too() -> None:
    script = Script(reset, first=lapsing)
    client = async_client(script, RETRY_FOR_EVER)
    with anyio.move_on_after(10) as late, pytest.raises(TransportError):
        await client.wait("req-1")
    assert not late.cancelled_caught, "the wait went on past the expiry's grace"


class _FastClock(datetime.datetime):
    """This host's clock, two minutes ahead of the service's."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime.now(tz) + datetime.timedelta(seconds=120)


def test_a_host_clock_ahead_of_the_services_does_not_end_a_wait_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host whose clock is two minutes fast, an approval with 30 s left is not "a minute
    past its expiry": the wait goes on, and gets the reviewer's accept. The expiry was compared
    with this host's clock, and the wait raised `WaitTimeout` at its first pending answer. The
    service's clock is read from its answers' `Date` header."""
    from approvals_client import _core

    monkeypatch.setattr(
        _core,
        "datetime",
        types.SimpleNamespace(datetime=_FastClock, timezone=datetime.timezone, timedelta=datetime.timedelta),
    )

    def dated(status: str) -> Answer:
        def answer(_: httpx.Request) -> httpx.Response:
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
            record = {**approval(status), "expires_at": expires}
            return httpx.Response(200, json=record, headers={"date": email.utils.formatdate(usegmt=True)})

        return answer

    script = Script(dated("pending"), times=1, first=dated("pending"), last=dated("accepted"))
    assert isinstance(sync_client(script).wait("req-1"), Approved)
    assert script.calls == 3

