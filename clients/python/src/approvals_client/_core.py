"""What the sync and the async client share: retry policy, request shapes, answer parsing."""

from __future__ import annotations

import codecs
import datetime
import email.utils
import json
import math
import os
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import quote

import httpx

from .errors import ApiError, ApprovalsError, ProtocolError, TransportError, WaitTimeout
from .models import Approval, AuditEvent, LiveEvent, Problem, Status

DEFAULT_TIMEOUT = 35.0
"""Seconds for a call other than a long-poll (connect, read and write each): longer than the
service's own request deadline (`server.request_timeout`, 30 s by default), so that the
service's `408` (retried) comes before the client gives up on its own."""

STREAM_LINGER = 60.0
"""How long a reconnecting live stream retries `too_many_streams` (seconds): the service lets
a broken stream go at its next write, a keep-alive at most 15 s away."""

SERVER_WAIT_CAP = 60
"""The service's longest long-poll (`approvals.long_poll_max`): a wait asks for at most this
and resumes after it."""

DEFAULT_POLL_SECONDS = 25
"""What one long-poll asks for by default: well under the idle timeout of the proxies commonly
in front of a service (nginx's `proxy_read_timeout` and an AWS load balancer's idle timeout
are 60 s). Asking for the service's 60 s, a poll answered at 60 s raced the proxy's own
timeout, and lost as a `504` that the wait took for an outage."""

MAX_IN_FLIGHT = 100
"""How many requests a client has in flight at once by default: as many as one HTTP/2
connection carries. httpcore opens at most 100 streams on a connection (fewer if the service
says so; the service allows 256) and puts the next request on the same connection all the
same, where it waits for a stream with no timeout at all (`AsyncHTTP2Connection`'s
`_max_streams_semaphore`): not the connect, read, write nor pool timeout, since the pool has
already handed it the connection. Over HTTP/1.1 it is httpx's default `max_connections`."""

# 408: the service's request deadline ran out; whatever the attempt did is found by the retry
# (a submit repeats its request_id; a decision already made reads as `already_decided`).
T = TypeVar("T")
E = TypeVar("E", bound=ApprovalsError)

RETRYABLE_STATUSES = frozenset({408, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter on `503` and `408` (and `502`/`504` from a proxy), on `429
    too_many_requests` (the token's calls in flight are at the service's limit) and on
    connection errors. Every retry of a submit sends the same `request_id`, so it can find
    the approval an earlier attempt parked but never parks a second one.

    attempt n (n >= 1) sleeps a random time in [d/2, d], d = min(max_backoff,
    initial_backoff * multiplier**(n-1)), or the server's `Retry-After` when longer, up to
    `max_retry_after` (a proxy's `Retry-After: 86400` must not park a live stream for a day).
    The call gives up once `max_elapsed` seconds have gone on failed attempts and pauses (a
    long-poll's own wait not counted), or after `max_attempts` attempts when that is set (by
    default it is not: 8 attempts ran out after about 15 s of an outage, well inside the 60 s
    budget, so a service restarting for 20 s failed every call caught in it). A `Retry-After`
    that would end past the budget ends the call at once rather than sleep to fail. No attempt
    starts past that budget (with `max_elapsed=None` too, a call retries for ever), and each
    attempt's connect, write and read timeouts are cut to what is left of it, but never below `ATTEMPT_FLOOR` (2 s, or the configured timeout when shorter): an
    attempt with a few milliseconds is doomed, and `max_elapsed=0` means one attempt, no retry.

    A policy that allows no retry (`max_attempts <= 1` as `NO_RETRY`, or `max_elapsed=0`) also
    keeps a `wait` from waiting out an outage: its first failure is raised.
    """

    max_attempts: int | None = None
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_elapsed: float | None = 60.0
    max_retry_after: float = 300.0

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        # The exponent is capped: a live stream retries without end, and 2.0 ** 1024 overflows.
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(max(0, attempt - 1), 64))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None and math.isfinite(retry_after):
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def left(self, elapsed: float) -> float | None:
        """What is left of `max_elapsed` after `elapsed` seconds (None: no budget)."""
        return None if self.max_elapsed is None else max(0.0, self.max_elapsed - elapsed)

    @property
    def retries(self) -> bool:
        """Whether this policy allows any retry at all (not `NO_RETRY`, not `max_elapsed=0`)."""
        return (self.max_attempts is None or self.max_attempts > 1) and (self.max_elapsed is None or self.max_elapsed > 0)

    def gives_up(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return self.max_elapsed is not None and elapsed + next_delay > self.max_elapsed


NO_RETRY = RetryPolicy(max_attempts=1)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (valid for the service's `^[A-Za-z0-9]…` pattern)."""
    return uuid.uuid4().hex


def segment(value: str) -> str:
    return quote(value, safe="")


def parsed(response: httpx.Response, build: Callable[[Any], T]) -> T:
    """A 2xx body read with `build`; `ProtocolError` when it is not what the contract says
    (a proxy's HTML page, a field missing, a status this client does not know)."""
    try:
        return build(response.json())
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ProtocolError(f"{response.request.method} {response.request.url}: unreadable answer ({error!r})") from error


def past(deadline: float | None, delay: float) -> bool:
    """Whether an attempt after `delay` would start past `deadline` (`time.monotonic()`)."""
    return deadline is not None and time.monotonic() + delay >= deadline


def by_deadline(error: E, policy_gave_up: bool) -> E:
    """`error`, the last of a call's retried failures, marked as ended by the caller's deadline
    when the retry policy would have tried again (see `ApprovalsError._deadline_passed`)."""
    error._deadline_passed = not policy_gave_up
    return error


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date (RFC 9110). None when absent or
    not a finite number (`inf` made `time.sleep` raise and `anyio.sleep` never return); how
    much of a long one to honour is the retry policy's `max_retry_after`."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def is_retryable(response: httpx.Response) -> bool:
    if response.status_code in RETRYABLE_STATUSES:
        return True
    # `429 too_many_requests`: this token has as many calls in flight as the service allows
    # one caller; one ends soon (`Retry-After`). The service's other 429s (`too_many_pending`,
    # `too_many_streams`) wait for people, not for a retry.
    # A 429 that is no problem of the service's is a proxy's rate limit: it passes too.
    return response.status_code == 429 and problem_code(response) in (None, "too_many_requests")


def is_retryable_failure(status: int, code: str | None) -> bool:
    """`is_retryable` for an answer already raised: its HTTP `status` and the service's problem
    `code` (None: the answer carried no problem of the service's, e.g. a proxy's page). A
    proxy's `429` (its rate limit) is one too; a `429` of the service's only when it is
    `too_many_requests`."""
    if status in RETRYABLE_STATUSES:
        return True
    return status == 429 and code in (None, "too_many_requests")


def may_have_acted(response: httpx.Response) -> bool:
    """Whether the service may have carried out a request answered with this retryable status:
    a 408, a proxy's 502/504, or a 503 (a Redis call past its deadline may have run) may come
    after the work was done; a `429 too_many_requests` is refused before any is."""
    return response.status_code != 429


def may_have_reached(error: httpx.TransportError) -> bool:
    """Whether a request that failed so may have reached the service: not when no connection
    was made (refused, or timed out connecting or waiting for one from the pool)."""
    return not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def request_error(method: str, url: str, error: Exception) -> ApprovalsError:
    """An httpx error that is no transport error as this package's own: a URL httpx cannot
    parse fails like one without a scheme, an answer it cannot decode (a `Content-Encoding`
    that lies, a redirect loop) is unreadable."""
    if isinstance(error, httpx.InvalidURL):
        return TransportError(f"{method} {url}: {error!r}")
    return ProtocolError(f"{method} {url}: unreadable answer ({error!r})")


def named(error: ApprovalsError, request_id: str, approval_id: str | None = None) -> ApprovalsError:
    """`error` with the submit's request id (and the approval's id, once parked), so that a
    caller trying again finds what a lost attempt may have parked."""
    error.request_id = request_id
    if approval_id is not None:
        error.approval_id = approval_id
    return error


def problem_code(response: httpx.Response) -> str | None:
    """The service's problem `code`; None for a body that is no problem of the service's (a
    gateway's `{"code": 429}` or `{"code": "rate_limited"}` included)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return service_code(body)


PROBLEM_TYPE = "urn:approvals:problem:"
"""How the `type` of every problem the service sends begins (`urn:approvals:problem:{code}`)."""


def service_code(body: Any) -> str | None:
    """The `code` of a body that is a problem of the service's: its problems always carry a
    `type` of `urn:approvals:problem:…` and a non-empty text `code`. A text `code` alone is not
    enough: a gateway's `429 {"code": "rate_limited"}` was taken for the service's own problem,
    neither retried nor waited out as an outage. (Nor is `application/problem+json`, which
    gateways send too.)"""
    if not isinstance(body, dict):
        return None
    kind, code = body.get("type"), body.get("code")
    if not (isinstance(kind, str) and kind.startswith(PROBLEM_TYPE)):
        return None
    return code if isinstance(code, str) and code else None


def api_error(response: httpx.Response, attempts: int = 1, earlier_may_have_acted: bool = False) -> ApprovalsError:
    """An error answer as an exception: `ApiError` for the service's problem+json, else
    `ProtocolError` with the answer's status (a proxy's HTML page, an empty body)."""
    error = _api_error(response)
    if isinstance(error, ApiError):
        error.attempts = attempts
        error._earlier_may_have_acted = earlier_may_have_acted
    # Kept for a wait that outlives the call's retries: it pauses as long as it was asked to.
    error.retry_after = retry_after_seconds(response)
    return error


def _api_error(response: httpx.Response) -> ApprovalsError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if service_code(body) is not None:
        try:
            problem = Problem.from_json({"status": response.status_code, **body})
        except (KeyError, TypeError, ValueError, AttributeError):
            # Its record unreadable here (a status this client does not know yet, or not an
            # object at all): the problem still says what happened, by its `code`, without
            # the record.
            try:
                unrecorded = {k: v for k, v in body.items() if k != "approval"}
                problem = Problem.from_json({"status": response.status_code, **unrecorded})
            except (KeyError, TypeError, ValueError, AttributeError):
                problem = None
        if problem is not None:
            # The status is the answer's: a body's `status` member is only what it says.
            return ApiError(response.status_code, problem.code, problem.title, problem.detail, problem)
    text = response.text[:200] if response.content else ""
    error = ProtocolError(
        f"{response.request.method} {response.request.url}: {response.status_code} {response.reason_phrase}"
        f" with no problem of the service's ({text!r})"
    )
    error.status = response.status_code
    return error


def submit_body(
    action: Mapping[str, Any],
    request_id: str,
    agent_id: str | None,
    context: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if "type" not in action or not isinstance(action["type"], str):
        raise ValueError("an action is an object with a string `type`")
    body: dict[str, Any] = {"request_id": request_id, "action": dict(action)}
    if agent_id is not None:
        body["agent_id"] = agent_id
    if context is not None:
        body["context"] = dict(context)
    return body


def decide_body(reason: str | None, action_digest: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if reason is not None:
        body["reason"] = reason
    if action_digest is not None:
        body["action_digest"] = action_digest
    return body


def list_params(status: Status | str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if status is not None:
        params["status"] = Status(status).value
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return params


def poll_seconds(remaining: float | None, per_poll: int) -> int:
    """What one long-poll asks for: the per-poll wait, the server's cap, or what is left of
    the caller's deadline, whichever is least (whole seconds, rounded down so that no poll
    outlasts the deadline; 0 asks for the current state)."""
    ask = min(per_poll, SERVER_WAIT_CAP)
    if remaining is not None:
        ask = min(ask, max(0, math.floor(remaining)))
    return max(0, int(ask))


def early_pause(asked: int, took: float, deadline: float | None) -> float:
    """The pause before the next poll of a wait whose poll asked for `asked` seconds and was
    answered pending after `took`: none after a poll that lasted at least half of what it
    asked, else up to a second (a draining instance, or a proxy, answers at once; polling
    again at once would be a loop of requests), never past `deadline`."""
    early = asked - took
    if early <= asked / 2:
        return 0.0
    pause = min(1.0, early / 2)
    if deadline is not None:
        pause = min(pause, max(0.0, deadline - time.monotonic()))
    return pause


def wait_deadline(timeout: float | None) -> float | None:
    """The `time.monotonic()` deadline of a wait of `timeout` seconds; None (no deadline) for
    None or infinity. `ValueError` for NaN, which no comparison could end."""
    if timeout is None or timeout == math.inf:
        return None
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    return time.monotonic() + timeout


def check_poll_seconds(value: int) -> int:
    """A per-poll wait of at least a second: 0 answers at once, and a wait built on it asked
    again and again without pause until someone decided."""
    if value < 1:
        raise ValueError(f"poll_seconds must be at least 1, not {value}")
    return value


# How long past the caller's deadline an attempt may still run: the answer to a long-poll
# that ends at the deadline is on its way then.
DEADLINE_GRACE = 2.0


def within(timeout: httpx.Timeout | float, deadline: float | None) -> httpx.Timeout | float:
    """`timeout` for one attempt, cut to what is left of `deadline` (`time.monotonic()`) plus
    a grace: a connection that went silent (an instance killed without a reset) must not hold
    the caller for a whole connect or read timeout past its deadline."""
    if deadline is None:
        return timeout
    return cut(timeout, max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE)


def cut(timeout: httpx.Timeout | float, seconds: float | None) -> httpx.Timeout | float:
    """`timeout` with each of its connect, read, write and pool timeouts at most `seconds`
    (None: as it is)."""
    if seconds is None:
        return timeout
    whole = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)

    def shorter(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(connect=shorter(whole.connect), read=shorter(whole.read), write=shorter(whole.write), pool=shorter(whole.pool))


# The least an attempt's connect, read, write or pool timeout is cut to by the retry budget
# (the configured timeout when that is shorter): an attempt with a few milliseconds left cannot
# connect, and a submit cut off so may have parked its approval all the same; with
# `max_elapsed=0` (one attempt, no retry) the only attempt had timeouts of 0.
ATTEMPT_FLOOR = 2.0


def attempt_timeout(
    timeout: httpx.Timeout | float, deadline: float | None, left: float | None, patience: float
) -> httpx.Timeout | float:
    """One attempt's timeout: cut to the caller's `deadline` (plus a grace, see `within`) and
    to what is `left` of the retry budget, at least `ATTEMPT_FLOOR`, plus the attempt's
    `patience` (a long-poll's wait): an attempt started near the end of the budget must not
    run a whole timeout past it, nor so little that it cannot succeed. The first attempt has
    the whole budget left, so it is cut only by a budget under its timeout, and never below
    the floor."""
    return cut(within(timeout, deadline), None if left is None else max(left, ATTEMPT_FLOOR) + patience)


def check_max_in_flight(value: int | None) -> int | None:
    """A bound of at least one request in flight (None: no bound of the client's own)."""
    if value is not None and value < 1:
        raise ValueError(f"max_in_flight must be at least 1 (or None), not {value}")
    return value


def wait_slots(max_in_flight: int) -> int:
    """How many of the `max_in_flight` slots waits (long-polls, live streams) may hold at once:
    all but a reserve of a tenth (at least one) for the other calls, which found none while
    waits held every slot. A bound of one keeps no reserve: a wait could never run."""
    return max(1, max_in_flight - max(1, max_in_flight // 10))


def slot_seconds(timeout: httpx.Timeout | float | None) -> float | None:
    """How long an attempt waits for a slot among the client's requests in flight: its pool
    timeout (the wait for a connection, which it is like), cut as the attempt's others are.
    None: as long as it takes (a client configured without timeouts)."""
    seconds = timeout.pool if isinstance(timeout, httpx.Timeout) else timeout
    return None if seconds is None else max(0.0, seconds)


def no_slot(limit: int, seconds: float, waiting: bool = False) -> httpx.PoolTimeout:
    """The error of an attempt that found no slot in time: a `PoolTimeout`, as when httpx's
    pool has no connection for it (retried the same way; the request was never sent).
    `waiting`: a wait that found none of the waits' share (`limit` of them)."""
    if waiting:
        return httpx.PoolTimeout(f"all {limit} of the client's slots for waits (max_in_flight less its reserve) still held after {seconds:g} s")
    return httpx.PoolTimeout(f"all {limit} of the client's requests in flight (max_in_flight) still running after {seconds:g} s")


def is_transient(error: httpx.TransportError) -> bool:
    """Whether a transport error may go away by itself: a refused or dropped connection, a
    timeout, a peer (or a proxy) that broke the protocol. A URL without a scheme or a request
    this side cannot send fails the same way every time, and is raised at once."""
    return not isinstance(error, (httpx.UnsupportedProtocol, httpx.LocalProtocolError))


def transport_error(method: str, url: str, error: httpx.TransportError) -> TransportError:
    """The error a call raises when the service could not be reached, marked with whether it
    may go away by itself (see `is_transient`)."""
    raised = TransportError(f"{method} {url}: {error!r}")
    raised._transient = is_transient(error)
    return raised


def is_transient_failure(error: ApprovalsError) -> bool:
    """Whether a failed call may succeed later unchanged, as the retries classify it (see
    `is_retryable_failure`): a `408`, `502`, `503`, `504`, a `429 too_many_requests` (or a
    proxy's `429`), or a service that could not be reached for a reason that may pass.
    Everything else stays what it is: a `500 internal` (a record the service cannot read), a
    `429 too_many_pending` or `too_many_streams` (waiting on people), a `401`, `403`, `404`,
    an unreadable answer, a URL that is no URL."""
    if isinstance(error, TransportError):
        return error._transient
    if isinstance(error, ApiError):
        return is_retryable_failure(error.status, error.code)
    if isinstance(error, ProtocolError) and error.status is not None:
        return is_retryable_failure(error.status, None)
    return False


# How long past an approval's `expires_at` a wait goes on through an outage: the service
# answers `expired` within a second of it, but the two clocks may disagree, and a service back
# from an outage records the expiry late. Past it the wait can only be failing: it raises.
EXPIRY_GRACE = 60.0


class ServerClock:
    """The service's wall clock, as an offset from this host's taken from each answer's `Date`
    header. An approval's `expires_at` is the service's time: on a host whose clock was minutes
    off, a wait gave up on a pending approval (or waited out an outage) that much early or
    late. `Date` has whole seconds, so an offset under `SKEW_IGNORED` is taken as none."""

    SKEW_IGNORED = 2.0

    def __init__(self) -> None:
        self.offset = 0.0

    def saw(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        try:
            theirs = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if theirs.tzinfo is None:
            return
        offset = (theirs - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        self.offset = offset if abs(offset) > self.SKEW_IGNORED else 0.0

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.offset)


def outage_deadline(deadline: float | None, known: Approval, clock: ServerClock) -> float:
    """Until when (`time.monotonic()`) a wait on `known` treats failures as "still pending":
    the caller's deadline, or the approval's expiry plus `EXPIRY_GRACE`, whichever is sooner."""
    expiry = _expiry_grace_ends(known, clock)
    return expiry if deadline is None else min(deadline, expiry)


def _expiry_grace_ends(known: Approval, clock: ServerClock) -> float:
    """`known`'s expiry plus `EXPIRY_GRACE`, on `time.monotonic()`'s clock."""
    expires_at = known.expires_at if known.expires_at.tzinfo else known.expires_at.replace(tzinfo=datetime.timezone.utc)
    return time.monotonic() + (expires_at - clock.now()).total_seconds() + EXPIRY_GRACE


def past_its_expiry(approval: Approval, clock: ServerClock) -> bool:
    """Whether `approval`, answered pending, is past its expiry by `EXPIRY_GRACE`: the service
    should have answered it expired long before."""
    return time.monotonic() >= _expiry_grace_ends(approval, clock)


def outage_outlasts_wait(
    error: ApprovalsError, deadline: float | None, known: Approval, delay: float, clock: ServerClock
) -> ApprovalsError | None:
    """What a wait on `known` raises when a poll failed with `error` (an outage) and the next
    would start after `delay`; None to poll again. An outage that outlasts the caller's
    deadline is that deadline passing with the approval still pending, as far as anyone
    knows: `WaitTimeout`, as a pending answer at the deadline would be (the guard's
    `on_refused` answers it; an outage's own error ended the agent's run). One that outlasts
    the approval's expiry by `EXPIRY_GRACE` is the outage's."""
    if not past(outage_deadline(deadline, known, clock), delay):
        return None
    if deadline is not None and past(deadline, delay) and deadline <= _expiry_grace_ends(known, clock):
        return WaitTimeout(known)
    return error


def already_done(error: ApiError, wanted: Status, reason: str | None = None) -> Approval | None:
    """After a retried decision: `already_decided` with the decision we asked for and the
    reason we gave (none if we gave none) means an earlier attempt, whose answer was lost, made
    it. Only when an earlier attempt may have acted: after nothing but `429`s, the decision is
    another reviewer's however alike, and everyone but the first decider is told. A decision
    with another reason, or with one where we gave none, stays an error too: it is not ours.
    (The client does not know its own subject: another reviewer's decision with the very same
    reason still reads as ours.)"""
    approval = error.approval
    if not error._earlier_may_have_acted:
        return None
    if error.code == "already_decided" and approval is not None and approval.status is wanted:
        if approval.decision_reason == reason:
            return approval
    return None


class Reconnect(Exception):
    """Raised inside a live stream's slot in flight to leave it before waiting `delay` seconds
    to reconnect: a stream waiting to try again is not open, and held a wait's slot meanwhile."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


def is_event_stream(response: httpx.Response) -> bool:
    """Whether a `200` to a live-stream request is one: `text/event-stream`, with parameters or
    without. A proxy's login page (`200 text/html`) was read as a stream without events, so a
    reconnecting stream asked for it again for ever, and `reconnect=False` returned nothing."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    return kind == "text/event-stream"


def not_a_stream(response: httpx.Response) -> ProtocolError:
    """The error of a live-stream request answered `200` with something else (see
    `is_event_stream`): not retried, as a wrong URL is not."""
    kind = response.headers.get("content-type")
    return ProtocolError(
        f"{response.request.method} {response.request.url}: {response.status_code} with content type {kind!r},"
        " not text/event-stream"
    )


_LINE_END = re.compile("\r\n|\r|\n")


class SseLines:
    """A live stream's bytes as lines, split where SSE splits them: at CR, LF or CRLF only.
    httpx's `iter_lines` splits at every `str.splitlines` break, U+2028, U+2029 and U+0085
    included, which JSON (and the service's serde_json) leaves unescaped in text: a reviewer's
    reason holding one cut its `data:` line in two, the event could not be read, and a
    reconnect replayed it, so the stream never got past it. Bytes are decoded as UTF-8 as they
    come (a character split between chunks is whole), a leading BOM is dropped, and a CR that
    ends a chunk ends its line at once (the LF that may follow in the next is the same break).
    What follows the last break when the stream ends is no line (SSE discards it)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._rest = ""
        self._after_cr = False
        self._started = False

    def feed(self, chunk: bytes) -> list[str]:
        """The lines (without their ends) that `chunk` completes."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        buffer = self._rest + text
        lines = _LINE_END.split(buffer)
        self._rest = lines.pop()
        self._after_cr = buffer.endswith("\r")
        return lines


class SseDecoder:
    """The text/event-stream format (WHATWG HTML, "server-sent events"), line by line."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.last_id: str | None = None
        # The last id as of the last frame that ended: an id takes effect when its frame does,
        # with or without data (the service's greeting has only `retry:` and `id:`).
        self.dispatched_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        """One line without its end; returns (event, data, id) when a blank line ends one."""
        if line == "":
            self.dispatched_id = self.last_id
            if not self.data:
                self.event = ""
                return None
            event = (self.event or "message", "\n".join(self.data), self.last_id)
            self.event, self.data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            # Capped as `Retry-After` is: a huge value would stop the stream for good.
            self.retry_ms = min(int(value), 300_000)
        return None


class Resume:
    """Where a live stream resumes after a reconnect, and which events it already yielded.

    On an engine whose audit settles late (Temporal), a resumed stream repeats what was
    recorded in the 15 s before its `Last-Event-ID` rather than risk missing an event that
    became visible late; this yields each event once. The resume point only moves forward.
    """

    SEEN_LIMIT = 10_000

    def __init__(self, last_event_id: str | None) -> None:
        self.last = last_event_id
        self._seen: OrderedDict[str, None] = OrderedDict()
        if last_event_id is not None:
            self._remember(last_event_id)

    def moved_to(self, stream_id: str | None) -> None:
        """A position the stream sent without an event: its start (the greeting of a stream
        opened without `Last-Event-ID`), or how far it has read past events it does not send
        (a long stretch of allowed actions). A reconnect resumes there; never backwards."""
        if stream_id is not None and (self.last is None or _position(stream_id) > _position(self.last)):
            self.last = stream_id

    def first_time(self, event: LiveEvent) -> bool:
        """Whether `event` was not yielded before (it is remembered then)."""
        if event.id is None:
            return True
        if event.id in self._seen:
            return False
        self._remember(event.id)
        if self.last is None or _position(event.id) > _position(self.last):
            self.last = event.id
        return True

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > self.SEEN_LIMIT:
            self._seen.popitem(last=False)


def _position(event_id: str) -> tuple[int, int, str]:
    """An event id's place in the audit: both engines' ids start with the event's time in
    milliseconds (Redis `1733…-0`, Temporal `0001733…-1-{id}`)."""
    millis, _, rest = event_id.partition("-")
    return (int(millis) if millis.isdigit() else -1, int(rest) if rest.isdigit() else -1, rest)


# The live stream's event names this client reads; others (a newer service's) are skipped.
LIVE_EVENTS = frozenset({"parked", "decided", "expired"})


def live_event(raw: tuple[str, str, str | None]) -> LiveEvent | None:
    """An event of the stream, or None for one this client does not know (SSE readers skip
    those: a newer service may send more); `ProtocolError` when a known event's data is not
    an audit event."""
    event, data, event_id = raw
    if event not in LIVE_EVENTS:
        return None
    try:
        return LiveEvent(event=event, id=event_id, data=AuditEvent.from_json(json.loads(data)))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ProtocolError(f"live event {event_id!r}: unreadable data ({error!r})") from error


class Abandoned(ApprovalsError):
    """The caller a sync call works for in a worker thread has gone (the async guard's caller
    was cancelled): the thread stops instead of waiting on, up to a day, for nobody."""


ABANDONED: ContextVar[threading.Event | None] = ContextVar("approvals_abandoned", default=None)
"""Set (by the guard) in a worker thread running a sync call: an event set once the caller has
gone. Checked before each attempt and during each pause of the sync client."""


def check_abandoned() -> None:
    gone = ABANDONED.get()
    if gone is not None and gone.is_set():
        raise Abandoned("the caller has gone")


def pause(seconds: float) -> None:
    """`time.sleep`, cut short by `Abandoned` when the caller has gone."""
    gone = ABANDONED.get()
    if gone is None:
        time.sleep(seconds)
    elif gone.wait(seconds):
        raise Abandoned("the caller has gone")


def env(name: str, given: str | None) -> str:
    if given is not None:
        return given
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"{name} is not set (or pass it explicitly)")
    return value
