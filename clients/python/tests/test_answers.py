"""What the client makes of answers the real service cannot be made to give on demand: a race
lost to another reviewer behind a `429`, a broken live-stream frame, an undecodable body.
These few tests answer from an `httpx.MockTransport`; everything else runs against the service."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import httpx
import pytest

from approvals_client import (
    ApiError,
    ApprovalsClient,
    AsyncApprovalsClient,
    ProtocolError,
    RetryPolicy,
    Status,
    TransportError,
)
from approvals_client import _core
from approvals_client._core import NO_RETRY, retry_after_seconds

QUICK = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


def problem(status: int, code: str, **members: Any) -> httpx.Response:
    body = {"type": f"urn:approvals:problem:{code}", "title": code, "status": status, "detail": code, "code": code, **members}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", "retry-after": "0"})


# Alice accepted it first, without a reason.
DECIDED_BY_ALICE = {
    "id": "req-1", "tenant": "acme", "status": "accepted", "agent_id": "agent", "submitted_by": "agent",
    "action": {"type": "document_read"}, "context": {}, "reasons": [], "policy_version": "v1",
    "submitted_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
    "decided_at": "2025-01-01T00:01:00Z", "decided_by": "alice",
}


def answers(*responses: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    """A transport answering each call with the next of `responses`."""
    queue = list(responses)
    return httpx.MockTransport(lambda request: queue.pop(0)(request))


def busy(_: httpx.Request) -> httpx.Response:
    return problem(429, "too_many_requests")


def unavailable(_: httpx.Request) -> httpx.Response:
    return problem(503, "backend_unavailable")


def lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset (test)", request=request)


def alice_first(_: httpx.Request) -> httpx.Response:
    return problem(409, "already_decided", approval=DECIDED_BY_ALICE)


def test_already_decided_after_a_refused_attempt_is_another_reviewers_decision() -> None:
    # The 429 did nothing: the decision is Alice's, and Bob is told (it read as his success).
    with httpx.Client(transport=answers(busy, alice_first)) as http, pytest.raises(ApiError) as raised:
        ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
    assert raised.value.code == "already_decided" and raised.value.approval is not None
    assert raised.value.approval.decided_by == "alice"

    # After an attempt that may have gone through, the decision may be ours: the record.
    for first in (lost, unavailable):
        with httpx.Client(transport=answers(first, alice_first)) as http:
            decided = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
        assert decided.status is Status.ACCEPTED


@pytest.mark.anyio
async def test_the_async_client_tells_the_same_apart() -> None:
    async with httpx.AsyncClient(transport=answers(busy, alice_first)) as http:
        with pytest.raises(ApiError) as raised:
            await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
    assert raised.value.code == "already_decided"

    async with httpx.AsyncClient(transport=answers(lost, alice_first)) as http:
        decided = await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
    assert decided.status is Status.ACCEPTED


def alice_first_with_a_reason(_: httpx.Request) -> httpx.Response:
    return problem(409, "already_decided", approval={**DECIDED_BY_ALICE, "decision_reason": "ok by alice"})


def test_a_retried_decision_without_a_reason_is_not_one_given_with_a_reason() -> None:
    """Bob's accept, without a reason, whose first answer was lost: a record accepted *with* a
    reason is another reviewer's (his attempt would have left none), and Bob is told. Any reason
    on the record passed as his, and his dashboard said he approved what Alice did."""
    with httpx.Client(transport=answers(lost, alice_first_with_a_reason)) as http, pytest.raises(ApiError) as raised:
        ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
    assert raised.value.code == "already_decided"
    assert raised.value.approval is not None and raised.value.approval.decided_by == "alice"


@pytest.mark.anyio
async def test_the_async_client_tells_a_reason_from_none_too() -> None:
    async with httpx.AsyncClient(transport=answers(lost, alice_first_with_a_reason)) as http:
        with pytest.raises(ApiError) as raised:
            await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).accept("req-1")
    assert raised.value.code == "already_decided"


def stream(body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


BROKEN_FRAMES = [
    b"id: 1-0\nevent: parked\ndata: {not json\n\n",  # not JSON
    b"id: 1-0\nevent: parked\ndata: {}\n\n",  # JSON, not an audit event
    b"id: 1-0\nevent: parked\ndata: []\n\n",  # not even an object
]


@pytest.mark.parametrize("frame", BROKEN_FRAMES)
def test_a_live_event_that_cannot_be_read_is_a_protocol_error(frame: bytes) -> None:
    with httpx.Client(transport=answers(stream(frame))) as http, pytest.raises(ProtocolError):
        next(ApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False))


@pytest.mark.anyio
@pytest.mark.parametrize("frame", BROKEN_FRAMES)
async def test_the_async_live_stream_too(frame: bytes) -> None:
    async with httpx.AsyncClient(transport=answers(stream(frame))) as http:
        with pytest.raises(ProtocolError):
            await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False).__anext__()


PARKED = (
    b'id: 2-0\nevent: parked\ndata: {"event_id": "2-0", "timestamp": "2025-01-01T00:00:00Z", '
    b'"tenant": "acme", "approval_id": "req-1", "kind": "submitted", "actor": "agent", "details": {}}\n\n'
)
# A later service's event this client does not know, before one it does.
UNKNOWN_THEN_PARKED = b'id: 1-0\nevent: lagged\ndata: {"behind": 3}\n\n' + PARKED


def test_a_live_event_of_a_name_this_client_does_not_know_is_skipped() -> None:
    """SSE readers skip events they do not know: a newer service may send more kinds. Such an
    event ended the stream with `ProtocolError`, even with `reconnect=True`."""
    with httpx.Client(transport=answers(stream(UNKNOWN_THEN_PARKED))) as http:
        event = next(ApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False))
    assert (event.event, event.id, event.data.approval_id) == ("parked", "2-0", "req-1")


@pytest.mark.anyio
async def test_the_async_live_stream_skips_it_too() -> None:
    async with httpx.AsyncClient(transport=answers(stream(UNKNOWN_THEN_PARKED))) as http:
        events = AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False)
        event = await events.__anext__()
    assert (event.event, event.id) == ("parked", "2-0")


class Breaking:
    """A live stream that advises `retry: 1000`, sends one event (a new one each time), then
    breaks; counts its connections."""

    def __init__(self) -> None:
        self.calls = 0

    def frames(self) -> Any:
        self.calls += 1
        yield b"retry: 1000\n\n" + PARKED.replace(b"2-0", f"{self.calls + 1}-0".encode())
        raise httpx.ReadError("connection reset (test)")

    def __call__(self, _: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self.frames())


def test_a_live_stream_that_breaks_at_once_is_reconnected_no_sooner_than_advised() -> None:
    """Each `200` started the backoff over, so a stream that opens and breaks at once (an
    overloaded instance, a proxy) was reconnected 5 to 10 times a second, whatever the
    service's `retry:` said; now no sooner than it says."""
    breaking = Breaking()
    started = time.monotonic()
    with httpx.Client(transport=httpx.MockTransport(breaking)) as http:
        events = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).events()
        ids = [next(events).id for _ in range(3)]
    assert ids == ["2-0", "3-0", "4-0"]
    assert time.monotonic() - started >= 1.9, "two reconnects, each at least a second after its break"


class AsyncBreaking(Breaking):
    async def aframes(self) -> Any:
        for frame in self.frames():
            yield frame

    def __call__(self, _: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self.aframes())


@pytest.mark.anyio
async def test_the_async_live_stream_is_reconnected_no_sooner_either() -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(transport=httpx.MockTransport(AsyncBreaking())) as http:
        events = AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).events()
        ids = [(await events.__anext__()).id for _ in range(3)]
    assert ids == ["2-0", "3-0", "4-0"]
    assert time.monotonic() - started >= 1.9


def undecodable(content_type: str) -> Callable[[httpx.Request], httpx.Response]:
    """A body that says it is gzip and is not."""
    headers = {"content-type": content_type, "content-encoding": "gzip"}
    return lambda _: httpx.Response(200, headers=headers, content=b"not gzip")


def test_an_undecodable_body_and_an_invalid_url_are_the_librarys_errors() -> None:
    with httpx.Client(transport=answers(undecodable("application/json"))) as http, pytest.raises(ProtocolError):
        ApprovalsClient("http://approvals.test", "t", "acme", http=http).get("req-1")
    # A live stream whose body does not decode.
    with httpx.Client(transport=answers(undecodable("text/event-stream"))) as http, pytest.raises(ProtocolError):
        next(ApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False))

    with ApprovalsClient("http://[::1", "t", "acme") as client:  # no closing bracket: httpx.InvalidURL
        with pytest.raises(TransportError):
            client.get("req-1")
        with pytest.raises(TransportError):
            next(client.events())


@pytest.mark.anyio
async def test_the_async_client_wraps_them_too() -> None:
    async with httpx.AsyncClient(transport=answers(undecodable("application/json"))) as http:
        with pytest.raises(ProtocolError):
            await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http).get("req-1")
    async with AsyncApprovalsClient("http://[::1", "t", "acme") as client:
        with pytest.raises(TransportError):
            await client.get("req-1")
        with pytest.raises(TransportError):
            await client.events().__anext__()


def proxy_page(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """What a proxy in front of the service answers: an HTML page, no problem+json."""
    page = f"<html><body><h1>{status}</h1>nginx</body></html>".encode()
    return lambda _: httpx.Response(status, headers={"content-type": "text/html"}, content=page)


@pytest.mark.parametrize("status", [403, 404, 502, 503])
def test_a_proxys_error_page_is_a_protocol_error_with_its_status(status: int) -> None:
    # Before, an ApiError with an empty code, as if the service had said something.
    with httpx.Client(transport=answers(*[proxy_page(status)] * QUICK.max_attempts)) as http:
        with pytest.raises(ProtocolError) as raised:
            ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).get("req-1")
    assert raised.value.status == status


def test_a_proxys_rate_limit_is_retried_on_a_single_call_too() -> None:
    # A gateway's 429 (no problem of the service's) was retried inside a wait but raised at
    # once by a submit or a read.
    def approval(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=DECIDED_BY_ALICE)

    def gateway_json(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"code": 429, "message": "rate limited"})

    with httpx.Client(transport=answers(proxy_page(429), gateway_json, approval)) as http:
        got = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).get("req-1")
    assert got.status == Status.ACCEPTED


def test_a_wait_asks_for_less_than_a_proxys_usual_idle_timeout() -> None:
    # It asked for 60 s, nginx's and an AWS load balancer's default idle timeout: a poll
    # answered at 60 s raced the proxy's 504.
    asked: list[int] = []

    def decided(request: httpx.Request) -> httpx.Response:
        asked.append(int(request.url.params["wait_seconds"]))
        return httpx.Response(200, json=DECIDED_BY_ALICE)

    with httpx.Client(transport=httpx.MockTransport(decided)) as http:
        outcome = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).wait("req-1")
    assert outcome.approval.status == Status.ACCEPTED
    assert asked and all(0 < wait <= 30 for wait in asked), asked


def test_a_wait_through_an_outage_comes_back_when_retry_after_says() -> None:
    # A proxy's maintenance page (503, Retry-After: 2) was polled again after the usual short
    # backoff, every few seconds for the whole maintenance window.
    pending = {**DECIDED_BY_ALICE, "status": "pending", "decided_at": None, "decided_by": None,
               "expires_at": "2099-01-01T00:00:00Z"}
    decided = {**DECIDED_BY_ALICE, "expires_at": "2099-01-01T00:00:00Z"}
    script = [
        lambda _: httpx.Response(200, json=pending),
        lambda _: httpx.Response(503, headers={"retry-after": "2", "content-type": "text/html"}, content=b"<h1>maintenance</h1>"),
        lambda _: httpx.Response(200, json=decided),
    ]
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        return script.pop(0)(request)

    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02, max_elapsed=1.0)
    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        outcome = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=policy).wait("req-1", poll_seconds=1)
    assert outcome.approval.status == Status.ACCEPTED
    assert len(sent) == 3 and sent[2] - sent[1] >= 1.9, sent


def test_the_default_policy_gives_up_by_its_time_budget_not_a_count_of_attempts() -> None:
    # With 8 attempts a call gave up after about 15 s of an outage, not the 60 s of
    # `max_elapsed`: a 20 s restart of the service failed every call caught in it.
    policy = RetryPolicy()
    assert not policy.gives_up(attempt=20, elapsed=40.0, next_delay=5.0)
    assert policy.gives_up(attempt=20, elapsed=56.0, next_delay=5.0)
    assert policy.retries and not NO_RETRY.retries


def test_the_status_of_an_api_error_is_the_answers() -> None:
    # A body whose `status` member says something else (a proxy passing on another answer's
    # body): the status is the one the client was answered with.
    def mislabelled(_: httpx.Request) -> httpx.Response:
        body = {"type": "urn:approvals:problem:not_found", "title": "Not found", "status": 200, "detail": "no", "code": "not_found"}
        return httpx.Response(404, json=body, headers={"content-type": "application/problem+json"})

    with httpx.Client(transport=answers(mislabelled)) as http, pytest.raises(ApiError) as raised:
        ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).get("req-1")
    assert (raised.value.status, raised.value.code) == (404, "not_found")


@pytest.mark.anyio
async def test_the_async_client_reads_them_alike() -> None:
    async with httpx.AsyncClient(transport=answers(*[proxy_page(502)] * QUICK.max_attempts)) as http:
        with pytest.raises(ProtocolError) as raised:
            await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).get("req-1")
    assert raised.value.status == 502


@pytest.mark.parametrize("header", ["inf", "Infinity", "nan", "86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_is_finite_and_capped(header: str) -> None:
    # `inf` made time.sleep raise OverflowError (and anyio.sleep never return); a day parked
    # a reconnecting live stream for a day.
    policy = RetryPolicy()
    response = httpx.Response(503, headers={"retry-after": header})
    delay = policy.backoff(1, retry_after_seconds(response))
    assert math.isfinite(delay) and delay <= policy.max_retry_after == 300


# A reviewer's reason with a LINE SEPARATOR (U+2028), which JSON, and the service's serde_json,
# leave unescaped in text; its UTF-8 bytes are split between two chunks below.
SEPARATED = (
    'id: 2-0\r\nevent: decided\r\ndata: {"event_id": "2-0", "timestamp": "2025-01-01T00:00:00Z", '
    '"tenant": "acme", "approval_id": "req-1", "kind": "rejected", "actor": "alice", '
    '"details": {"reason": "no\u2028not now \u0085 \u2029"}}\r\n\r\n'
).encode()


def separated_chunks() -> list[bytes]:
    """`SEPARATED` cut inside the U+2028's three bytes, and between the CR and the LF of the
    `\\r\\n` that ends the `id:` line: one line break, not two (a blank line between them would
    end a frame with only an id)."""
    cut = SEPARATED.index("\u2028".encode()) + 1
    crlf = SEPARATED.index(b"\r\n") + 1
    return [SEPARATED[:crlf], SEPARATED[crlf:cut], SEPARATED[cut:]]


def test_a_line_separator_in_a_live_events_data_does_not_cut_its_line() -> None:
    """SSE ends a line at CR, LF or CRLF only; httpx's `iter_lines` ends one at U+2028, U+2029
    and U+0085 too, so a reason holding one cut its `data:` line, the event was unreadable
    (`ProtocolError`), and a reconnect replayed it: the stream never got past it."""

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(separated_chunks()))

    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        event = next(ApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False))
    assert (event.event, event.id) == ("decided", "2-0")
    assert event.data.details == {"reason": "no\u2028not now \u0085 \u2029"}


@pytest.mark.anyio
async def test_the_async_live_stream_keeps_the_line_whole_too() -> None:
    async def chunks() -> Any:
        for chunk in separated_chunks():
            yield chunk

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        event = await AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False).__anext__()
    assert event.data.details == {"reason": "no\u2028not now \u0085 \u2029"}


def test_a_live_stream_splits_lines_at_cr_lf_and_crlf_only() -> None:
    # A CR alone ends a line as LF and CRLF do; a CR that ends a chunk ends its line at once
    # (the frame is not held back for the next chunk), and an LF after it is the same break.
    lines = _core.SseLines()
    assert lines.feed("\ufeffa\rb\nc\r\nd\r".encode()) == ["a", "b", "c", "d"]
    assert lines.feed(b"\n\r") == [""]
    assert lines.feed("\ne\u2028f".encode()) == []
    assert lines.feed(b"\n") == ["e\u2028f"]


def login_page(calls: list[int]) -> httpx.MockTransport:
    """A proxy's login page, `200 text/html`, for anything asked; more than three calls fail
    the test (a stream that asks again and again would never end)."""

    def answer(_: httpx.Request) -> httpx.Response:
        calls.append(1)
        assert len(calls) <= 3, "asked for the login page again and again"
        return httpx.Response(200, headers={"content-type": "text/html; charset=utf-8"}, content=b"<html>log in</html>")

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("reconnect", [True, False])
def test_a_200_that_is_no_event_stream_is_a_protocol_error(reconnect: bool) -> None:
    """A proxy's login page answers `200 text/html`: read as a stream without events,
    `reconnect=True` asked for it again for ever and `reconnect=False` ended with nothing.
    Asked again it answers the same: not retried, as a wrong URL is not."""
    calls: list[int] = []
    with httpx.Client(transport=login_page(calls)) as http, pytest.raises(ProtocolError) as raised:
        list(ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).events(reconnect=reconnect))
    assert "text/event-stream" in str(raised.value) and len(calls) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("reconnect", [True, False])
async def test_the_async_live_stream_refuses_it_too(reconnect: bool) -> None:
    calls: list[int] = []
    async with httpx.AsyncClient(transport=login_page(calls)) as http:
        with pytest.raises(ProtocolError):
            async for _ in AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).events(reconnect=reconnect):
                pass
    assert len(calls) == 1


def test_a_page_that_is_no_stream_after_the_stream_opened_is_reconnected_through() -> None:
    """Once a stream has opened it reconnects through outages of any length: a maintenance
    page answered `200 text/html` meanwhile is one, not the end of the stream."""
    later = PARKED.replace(b"2-0", b"3-0").replace(b"req-1", b"req-2")

    def maintenance(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>back soon</html>")

    with httpx.Client(transport=answers(stream(PARKED), maintenance, stream(later))) as http:
        events = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).events()
        got = [next(events).id, next(events).id]
    assert got == ["2-0", "3-0"]


def test_an_event_stream_with_parameters_is_one() -> None:
    answer = httpx.Response(200, headers={"content-type": "Text/Event-Stream; charset=utf-8"}, content=PARKED)
    with httpx.Client(transport=answers(lambda _: answer)) as http:
        event = next(ApprovalsClient("http://approvals.test", "t", "acme", http=http).events(reconnect=False))
    assert event.id == "2-0"


def test_a_gateways_rate_limit_with_a_text_code_is_retried() -> None:
    """Any JSON body with a text `code` passed for the service's problem, so a gateway's `429
    {"code": "rate_limited"}` was raised as the service's refusal, neither retried nor waited
    out. The service's problems have a `type` of `urn:approvals:problem:…`."""

    def gateway(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"code": "rate_limited", "message": "slow down"}, headers={"retry-after": "0"})

    def approval(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=DECIDED_BY_ALICE)

    with httpx.Client(transport=answers(gateway, approval)) as http:
        got = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=QUICK).get("req-1")
    assert got.id == "req-1" and got.status is Status.ACCEPTED
