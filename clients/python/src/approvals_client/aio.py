"""The asynchronous client (asyncio or trio, through httpx and anyio)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, AsyncIterator, Callable, Mapping

import anyio
import httpx

from . import _core
from ._core import DEFAULT_TIMEOUT, RetryPolicy, segment
from .errors import ApiError, ApprovalsError, ProtocolError, TransportError, WaitTimeout
from .models import Approval, ApprovalPage, LiveEvent, Outcome, Status, SubmitResponse, outcome_of

log = logging.getLogger("approvals_client")


class AsyncApprovalsClient:
    """A tenant's view of the approvals service, for an agent or a reviewer.

    `token` is a bearer token of `tenant` (`approvals token new`); an agent token submits and
    waits, a reviewer token lists and decides. `poll_seconds` is how long one long-poll asks
    the service to hold (25 s by default, under the 60 s idle timeout of common proxies; the
    service caps it at 60 s); `wait` chains polls up to the caller's deadline.
    Pass `http` to reuse an `httpx.AsyncClient` of your own (its base URL is ignored).

    At most `max_in_flight` requests (100, as many as httpx carries on one HTTP/2 connection;
    None: no bound) are in flight at once, a live stream counting as one while it is open;
    the next waits for one to end, at most its pool timeout (the client's `timeout`, cut to
    a call's deadline), and then fails as one finding no connection in httpx's pool does
    (`httpx.PoolTimeout`, retried like it). Without this bound a request beyond an HTTP/2
    connection's streams would wait for one without any timeout. Waits (long-polls and live
    streams) hold at most `max_in_flight` less a reserve of a tenth (at least one; none with a
    bound of one) at once, so that a submit, get or decision finds a slot however many waits
    are under way.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        tenant: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        poll_seconds: int = _core.DEFAULT_POLL_SECONDS,
        events_read_timeout: float = 45.0,
        http: httpx.AsyncClient | None = None,
        max_in_flight: int | None = _core.MAX_IN_FLIGHT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant = tenant
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.poll_seconds = _core.check_poll_seconds(poll_seconds)
        self.events_read_timeout = events_read_timeout
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._clock = _core.ServerClock()
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self.max_in_flight = _core.check_max_in_flight(max_in_flight)
        # anyio's, not asyncio's: the client runs on trio too.
        self._slots = anyio.Semaphore(max_in_flight, max_value=max_in_flight) if max_in_flight is not None else None
        # Taken by a wait before one of `_slots`: waits holding every slot shut out each other call.
        share = _core.wait_slots(max_in_flight) if max_in_flight is not None else None
        self._wait_slots = anyio.Semaphore(share, max_value=share) if share is not None else None

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncApprovalsClient:
        """From `APV_URL`, `APV_TOKEN` and `APV_TENANT` (see `ApprovalsClient.from_env`)."""
        return cls(
            _core.env("APV_URL", kwargs.pop("base_url", None)),
            _core.env("APV_TOKEN", kwargs.pop("token", None)),
            _core.env("APV_TENANT", kwargs.pop("tenant", None)),
            **kwargs,
        )

    # --- plumbing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncApprovalsClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _url(self, *parts: str) -> str:
        tail = "".join("/" + segment(p) for p in parts)
        return f"{self.base_url}/v1/tenants/{segment(self.tenant)}{tail}"

    @contextlib.asynccontextmanager
    async def _in_flight(self, timeout: httpx.Timeout | float, waiting: bool = False) -> AsyncIterator[None]:
        """One of the `max_in_flight` slots for a request, waited for at most `timeout`'s pool
        timeout (`httpx.PoolTimeout` then), held until the request's answer is read. A
        `waiting` request (a long-poll, a live stream) first takes one of the waits' share,
        within the same pool timeout."""
        if self._slots is None or self._wait_slots is None or self.max_in_flight is None:
            yield
            return
        seconds = _core.slot_seconds(timeout)
        share = self._wait_slots if waiting else None
        shared = False
        acquired = False
        try:
            with anyio.move_on_after(seconds):
                if share is not None:
                    await share.acquire()
                    shared = True
                await self._slots.acquire()
                acquired = True
        except BaseException:
            # Cancelled while waiting for a slot: the waits' share taken first goes back, or
            # each such cancel would shrink it for good.
            if shared and share is not None:
                share.release()
            raise
        try:
            if not acquired:
                if share is not None and not shared:
                    raise _core.no_slot(_core.wait_slots(self.max_in_flight), seconds or 0.0, waiting=True)
                raise _core.no_slot(self.max_in_flight, seconds or 0.0)
            try:
                yield
            finally:
                self._slots.release()
        finally:
            if shared and share is not None:
                share.release()

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        json: Any = None,
        timeout: httpx.Timeout | float | None = None,
        patience: float = 0.0,
        deadline: float | None = None,
        waiting: bool = False,
    ) -> tuple[httpx.Response, int]:
        """One call, retried on 503/502/504/408/429 and connection errors; (answer, attempts).

        `patience`: how long each attempt may take by design (a long-poll's wait), not counted
        against the retry policy's `max_elapsed`: a poll cut off after waiting 60 s is retried.
        Each attempt's timeouts are cut to what is left of `max_elapsed` (at least
        `_core.ATTEMPT_FLOOR`, 2 s, or the configured timeout when shorter) plus its `patience`.
        `params` may be a function, called for each attempt (a retried long-poll asks only for
        what is left of its wait). `deadline` (`time.monotonic()`): no retry would end past
        it; the last error is raised instead. `waiting`: a long-poll (see `_in_flight`).
        """
        started = time.monotonic()
        waited = 0.0
        attempt = 0
        # Whether an attempt before this one may have been carried out (see `already_done`).
        acted = False
        while True:
            attempt += 1
            attempt_started = time.monotonic()
            def limits() -> httpx.Timeout | float:
                # As of now: what waiting for a slot took is not given to the request again.
                return _core.attempt_timeout(
                    timeout if timeout is not None else self.timeout,
                    deadline,
                    self.retry.left(time.monotonic() - started - waited),
                    patience,
                )

            try:
                async with self._in_flight(limits(), waiting):
                    response = await self._http.request(
                        method,
                        url,
                        params=params() if callable(params) else params,
                        json=json,
                        headers=self._headers,
                        timeout=limits(),
                    )
            except httpx.TransportError as error:
                waited += min(time.monotonic() - attempt_started, patience)
                delay = self.retry.backoff(attempt)
                if not _core.is_transient(error):
                    raise _core.transport_error(method, url, error) from error
                gave_up = self.retry.gives_up(attempt, time.monotonic() - started - waited, delay)
                if gave_up or _core.past(deadline, delay):
                    raise _core.by_deadline(_core.transport_error(method, url, error), gave_up) from error
                acted = acted or _core.may_have_reached(error)
                log.info("%s %s: %r; retry %d in %.2fs", method, url, error, attempt, delay)
                await anyio.sleep(delay)
                continue
            except (httpx.InvalidURL, httpx.RequestError) as error:
                # Neither retried: the same URL or the same answer fails again.
                raise _core.request_error(method, url, error) from error
            self._clock.saw(response)
            if _core.is_retryable(response):
                waited += min(time.monotonic() - attempt_started, patience)
                delay = self.retry.backoff(attempt, _core.retry_after_seconds(response))
                gave_up = self.retry.gives_up(attempt, time.monotonic() - started - waited, delay)
                if gave_up or _core.past(deadline, delay):
                    raise _core.by_deadline(_core.api_error(response, attempt, acted), gave_up)
                acted = acted or _core.may_have_acted(response)
                log.info("%s %s: %d; retry %d in %.2fs", method, url, response.status_code, attempt, delay)
                await anyio.sleep(delay)
                continue
            if response.is_error:
                raise _core.api_error(response, attempt, acted)
            return response, attempt

    # --- agents -----------------------------------------------------------------------------

    async def submit(
        self,
        action: Mapping[str, Any],
        *,
        request_id: str | None = None,
        agent_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> SubmitResponse:
        """Asks the policy about `action` (an object with a string `type`). Without a
        `request_id` one is generated here, before the first attempt, so retries repeat it."""
        return await self._submit(action, request_id, agent_id, context, None)

    async def _submit(
        self,
        action: Mapping[str, Any],
        request_id: str | None,
        agent_id: str | None,
        context: Mapping[str, Any] | None,
        deadline: float | None,
    ) -> SubmitResponse:
        request_id = request_id or _core.new_request_id()
        body = _core.submit_body(action, request_id, agent_id, context)
        try:
            response, _ = await self._send("POST", self._url("approvals"), json=body, deadline=deadline)
            return _core.parsed(
                response, lambda body: SubmitResponse.from_json(body, request_id=request_id, created=response.status_code == 201)
            )
        except ApprovalsError as error:
            # An attempt whose answer was lost may have parked it: the id finds it again.
            _core.named(error, request_id)
            raise

    async def get(self, approval_id: str) -> Approval:
        response, _ = await self._send("GET", self._url("approvals", approval_id))
        return _core.parsed(response, Approval.from_json)

    async def poll(self, approval_id: str, wait_seconds: int, *, deadline: float | None = None) -> Approval:
        """One long-poll: the approval once decided, or as it is (pending) after the wait.
        With a `deadline` (`time.monotonic()`), a retry asks only for what is left of the wait
        and none is made past it."""
        read = wait_seconds + self.timeout

        def params() -> dict[str, Any]:
            remaining = None if deadline is None else deadline - time.monotonic()
            return {"wait_seconds": _core.poll_seconds(remaining, wait_seconds)}

        response, _ = await self._send(
            "GET",
            self._url("approvals", approval_id, "decision"),
            params=params,
            timeout=httpx.Timeout(self.timeout, read=read),
            patience=wait_seconds,
            deadline=deadline,
            waiting=True,
        )
        return _core.parsed(response, Approval.from_json)

    async def wait(
        self,
        approval_id: str,
        *,
        timeout: float | None = None,
        poll_seconds: int | None = None,
        approval: Approval | None = None,
    ) -> Outcome:
        """Waits until the approval is decided or expires; `Approved`, `Rejected` or `Expired`.

        Long-polls again after each answer that is still pending, so a wait may last longer
        than the server's 60 s cap; `timeout` (seconds, None: until the approval's own
        expiry) is the caller's deadline, past which `WaitTimeout` is raised. The deadline
        bounds retries too: a poll failing near it is not retried past it.

        Once a poll has read the approval, an outage of any length is waited out: what the
        retries retry (a `408`, `502`, `503`, `504`, a `429 too_many_requests` or a proxy's
        `429`, an unreachable service) counts as "still pending", and the wait polls again
        with capped backoff, until the deadline (then `WaitTimeout`, the last error its
        `__cause__`) or, with none, the approval's `expires_at` plus a minute, where the last
        error is raised; the first failed poll of an outage is
        logged at WARNING, the others at INFO. Before that the retry policy applies, so a
        wrong URL fails soon; pass the `approval` already read (`submit(...).approval`, as
        `submit_and_wait` does) to wait out an outage from the first poll. Anything else is
        raised at once: `500 internal` (a record the service cannot read), `429
        too_many_pending`/`too_many_streams`, `401`, `403`, `404` and the like. A client whose
        retry policy allows no retry (`NO_RETRY`, or `max_elapsed=0`) waits out no outage
        either: the first failure is raised.
        """
        if approval is not None and approval.id != approval_id:
            raise ValueError(f"approval= is {approval.id}, not {approval_id}")
        per_poll = _core.check_poll_seconds(poll_seconds) if poll_seconds is not None else self.poll_seconds
        deadline = _core.wait_deadline(timeout)
        return await self._wait(approval_id, deadline, per_poll, approval)

    async def _wait(self, approval_id: str, deadline: float | None, per_poll: int, known: Approval | None) -> Outcome:
        """`wait` up to `deadline` (`time.monotonic()`); `known`: the approval as last read
        (from the submit that parked it), after which failures only mean "still pending"."""
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            asked = _core.poll_seconds(remaining, per_poll)
            if remaining is not None and asked == 0 and remaining > 0:
                # Under a second left: wait it out, then one last look (a 0 s poll answers at
                # once, and asking again and again until the deadline would spin).
                await anyio.sleep(remaining)
            started = time.monotonic()
            try:
                # Through an outage a poll's own retries end with the outage's bound too
                # (the approval's expiry plus a minute): without a caller's deadline they went
                # on as long as the retry policy allowed, for ever with `max_elapsed=None`.
                bound = deadline if known is None else _core.outage_deadline(deadline, known, self._clock)
                approval = await self.poll(approval_id, asked, deadline=bound)
            except ApprovalsError as error:
                # Each poll has the retry policy's budget only; the approval is parked and
                # stays so through an outage, which may outlast that budget. Only
                # what the retries retry is an outage, and a policy without retries (NO_RETRY)
                # asked for the first failure.
                if known is None or not self.retry.retries or not _core.is_transient_failure(error):
                    raise
                failures += 1
                # A proxy's maintenance page says when to come back (`Retry-After`): polled
                # every few seconds meanwhile, it was asked again and again for nothing.
                delay = self.retry.backoff(failures, error.retry_after)
                ended = _core.outage_outlasts_wait(error, deadline, known, delay, self._clock)
                if ended is error:
                    raise
                if ended is not None:
                    raise ended from error
                # Told once per outage (a wait may outlast one for a day); each poll after at INFO.
                level = logging.WARNING if failures == 1 else logging.INFO
                log.log(level, "wait %s: %s; poll again in %.2fs", approval_id, error, delay)
                await anyio.sleep(delay)
                continue
            if failures:
                log.info("wait %s: answered again after %d failed polls", approval_id, failures)
            failures = 0
            known = approval
            if approval.decided:
                return outcome_of(approval)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(approval)
            if _core.past_its_expiry(approval, self._clock):
                # Still pending a minute past its expiry (a service whose clock is off, or
                # that cannot record expiries): a wait without a timeout would poll forever.
                raise WaitTimeout(approval)
            # Pending long before the wait asked for (a draining instance answers at once):
            # pause rather than ask again at once, in a loop.
            pause = _core.early_pause(asked, time.monotonic() - started, deadline)
            if pause > 0:
                await anyio.sleep(pause)

    async def submit_and_wait(
        self,
        action: Mapping[str, Any],
        *,
        request_id: str | None = None,
        agent_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """`submit`, then `wait` if the action was parked: the request's final outcome.
        `timeout` covers both: the submit's retries stop at it too."""
        deadline = _core.wait_deadline(timeout)
        submitted = await self._submit(action, request_id, agent_id, context, deadline)
        outcome = submitted.outcome()
        if outcome is not None:
            return outcome
        if submitted.approval is None:
            raise _core.named(ProtocolError("the service parked the action but sent no approval"), submitted.request_id)
        try:
            return await self._wait(submitted.approval.id, deadline, self.poll_seconds, submitted.approval)
        except ApprovalsError as error:
            _core.named(error, submitted.request_id, submitted.approval.id)
            raise

    # --- reviewers --------------------------------------------------------------------------

    async def list(
        self, status: Status | str | None = Status.PENDING, *, limit: int | None = None, cursor: str | None = None
    ) -> ApprovalPage:
        """One page of the tenant's approvals in `status`, oldest first."""
        response, _ = await self._send("GET", self._url("approvals"), params=_core.list_params(status, limit, cursor))
        return _core.parsed(response, ApprovalPage.from_json)

    async def list_all(self, status: Status | str | None = Status.PENDING, *, page_size: int | None = None) -> AsyncIterator[Approval]:
        """Every approval in `status`, following `next_cursor`."""
        cursor: str | None = None
        while True:
            page = await self.list(status, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            if page.next_cursor == cursor:
                # A cursor that does not move would page forever.
                raise ProtocolError(f"the service repeated the cursor {cursor!r}")
            cursor = page.next_cursor

    async def accept(self, approval_id: str, *, reason: str | None = None, action_digest: str | None = None) -> Approval:
        """Accepts a pending approval (the first decision wins: `ApiError` `already_decided`,
        `expired`, `self_approval` otherwise). Pass the `action_digest` you were shown to be
        refused (`action_mismatch`) if the record's action is not that one."""
        return await self._decide("accept", Status.ACCEPTED, approval_id, reason, action_digest)

    async def reject(self, approval_id: str, *, reason: str | None = None, action_digest: str | None = None) -> Approval:
        """Rejects a pending approval; see `accept`."""
        return await self._decide("reject", Status.REJECTED, approval_id, reason, action_digest)

    async def _decide(self, verb: str, wanted: Status, approval_id: str, reason: str | None, digest: str | None) -> Approval:
        url = self._url("approvals", approval_id, verb)
        try:
            response, _ = await self._send("POST", url, json=_core.decide_body(reason, digest))
        except ApiError as error:
            # A retried decision whose first attempt went through answers already_decided.
            done = _core.already_done(error, wanted, reason)
            if done is not None and error.attempts > 1:
                return done
            raise
        return _core.parsed(response, Approval.from_json)

    async def events(self, last_event_id: str | None = None, *, reconnect: bool = True) -> AsyncIterator[LiveEvent]:
        """The tenant's live events (`parked`, `decided`, `expired`) as they are recorded.

        Starts after `last_event_id` when given (else with what happens from now on) and,
        with `reconnect`, resumes after the last event seen whenever the stream ends or
        breaks, so none is missed or repeated (on Temporal the service repeats the 15 s before
        the resume point; the client drops what it yielded already, but after a restart with
        a saved `last_event_id` those events may come again: deduplicate by `event_id`).
        Once the stream has opened, it keeps reconnecting through outages of any length (as
        a browser's EventSource does), and through `too_many_streams` while the service still
        counts the stream that broke; before that, the retry policy applies. A `200` that is
        no `text/event-stream` (a proxy's login page) raises `ProtocolError` at once before the
        stream has opened, and is reconnected through after. Stop by breaking
        out of the loop, inside `contextlib.aclosing(...)`: an async generator broken out of
        stays open (its connection and one of the token's streams held) until collected.
        """
        url = self._url("events")
        resume = _core.Resume(last_event_id)
        failures = 0
        # The retry budget holds only until the stream first opens (a wrong URL or token fails
        # soon); it counts from the first failure of a run of them.
        started = time.monotonic()
        opened = False
        # Since when reconnects have met `too_many_streams`: retried a while only, for the
        # stream that broke to be let go; a token truly at its limit is told.
        refused_since: float | None = None
        # The service's advice on when to reconnect (`retry:`), kept across connections: a
        # stream that breaks right after opening is reconnected no sooner than that either.
        advised_ms = 1000
        while True:
            headers = dict(self._headers, Accept="text/event-stream")
            if resume.last is not None:
                headers["Last-Event-ID"] = resume.last
            decoder = _core.SseDecoder()
            timeout = httpx.Timeout(self.timeout, read=self.events_read_timeout)
            try:
                async with self._in_flight(timeout, waiting=True), self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
                    if response.status_code != 200:
                        await response.aread()
                        lingering = False
                        if opened and _core.problem_code(response) == "too_many_streams":
                            refused_since = refused_since if refused_since is not None else time.monotonic()
                            lingering = time.monotonic() - refused_since < _core.STREAM_LINGER
                        if not (reconnect and (_core.is_retryable(response) or lingering)):
                            raise _core.api_error(response)
                        if failures == 0:
                            started = time.monotonic()
                        failures += 1
                        delay = self.retry.backoff(failures, _core.retry_after_seconds(response))
                        if not opened and self.retry.gives_up(failures, time.monotonic() - started, delay):
                            raise _core.api_error(response)
                        log.info("GET %s: %d; reconnect %d in %.2fs", url, response.status_code, failures, delay)
                        # Out of the slot first: the stream is not open while it waits.
                        raise _core.Reconnect(delay)
                    if not _core.is_event_stream(response):
                        # A proxy's login page: asked again, it answers the same, so before
                        # the stream has opened it is an error at once. Once it has, it may be
                        # an outage's maintenance page: reconnected through, as any outage.
                        if not (reconnect and opened):
                            raise _core.not_a_stream(response)
                        failures += 1
                        delay = self.retry.backoff(failures, None)
                        log.info("GET %s: 200 with no event stream; reconnect %d in %.2fs", url, failures, delay)
                        raise _core.Reconnect(delay)
                    failures = 0
                    opened = True
                    refused_since = None
                    splitter = _core.SseLines()
                    async for chunk in response.aiter_bytes():
                        for line in splitter.feed(chunk):
                            raw = decoder.feed(line)
                            if raw is None:
                                resume.moved_to(decoder.dispatched_id)
                            else:
                                event = _core.live_event(raw)
                                if event is None:
                                    resume.moved_to(raw[2])
                                elif resume.first_time(event):
                                    yield event
            except _core.Reconnect as again:
                await anyio.sleep(again.delay)
                continue
            except httpx.TransportError as error:
                if not reconnect:
                    raise TransportError(f"GET {url}: {error!r}") from error
                if failures == 0:
                    started = time.monotonic()
                failures += 1
                if decoder.retry_ms is not None:
                    advised_ms = decoder.retry_ms
                delay = self.retry.backoff(failures)
                if opened:
                    # Each answer of 200 starts the backoff over: without this floor a stream
                    # that opens and breaks at once was reconnected 5 to 10 times a second.
                    delay = max(delay, advised_ms / 1000)
                elif self.retry.gives_up(failures, time.monotonic() - started, delay):
                    raise TransportError(f"GET {url}: {error!r}") from error
                await anyio.sleep(delay)
                continue
            except (httpx.InvalidURL, httpx.RequestError) as error:
                raise _core.request_error("GET", url, error) from error
            if not reconnect:
                return
            if decoder.retry_ms is not None:
                advised_ms = decoder.retry_ms
            await anyio.sleep(advised_ms / 1000)
