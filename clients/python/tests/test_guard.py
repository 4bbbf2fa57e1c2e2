"""The `require_approval` guard, sync and async, against the real service."""

from __future__ import annotations

import datetime
import enum
import inspect
import math
import threading
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import Service, Tenant
from helpers import CountingPolls, Reviewer, until

from approvals_client import (
    ActionChanged,
    ApiError,
    ApprovalRefused,
    ApprovalsClient,
    Approved,
    AsyncApprovalsClient,
    Denied,
    Expired,
    Rejected,
    RetryPolicy,
    Status,
    TimedOut,
    TransportError,
    WaitTimeout,
    describe_refusal,
    require_approval,
)


def test_the_guard_runs_the_function_only_when_allowed_or_approved(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    calls: list[str] = []

    @require_approval(agent, timeout=30)
    def document_read(resource: str, classification: str = "internal") -> str:
        """Reads a document."""
        calls.append(resource)
        return f"contents of {resource}"

    assert document_read.__name__ == "document_read" and document_read.__doc__ == "Reads a document."
    assert document_read("docs/handbook.md") == "contents of docs/handbook.md"  # allowed

    helper = Reviewer(reviewer, verdict="accept")
    helper.start()
    assert document_read("finance/q3-report") == "contents of finance/q3-report"  # approved
    (decided,) = helper.finish()
    # The action is built from the call: type from the function's name, arguments as members.
    assert decided.action == {"type": "document_read", "resource": "finance/q3-report", "classification": "internal"}

    helper = Reviewer(reviewer, verdict="reject", reason="no finance today")
    helper.start()
    with pytest.raises(ApprovalRefused) as refused:
        document_read("finance/q4-report")
    helper.finish()
    assert isinstance(refused.value.outcome, Rejected) and refused.value.reasons == ["no finance today"]
    assert calls == ["docs/handbook.md", "finance/q3-report"]


def test_a_denied_call_is_refused_at_once_or_answered_by_on_refused(agent: ApprovalsClient) -> None:
    @require_approval(agent, action=lambda path: {"type": "file_delete", "resource": path})
    def remove(path: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(ApprovalRefused) as refused:
        remove("docs/handbook.md")
    assert isinstance(refused.value.outcome, Denied) and refused.value.reasons

    @require_approval(agent, action_type="file_delete", on_refused=describe_refusal)
    def remove_quietly(resource: str) -> str:
        raise AssertionError("must not run")

    assert remove_quietly("docs/x").startswith("denied by policy: ")


@pytest.mark.anyio
async def test_an_async_on_refused_is_awaited(service: Service, tenant: Tenant) -> None:
    # It was handed back to the framework as a coroutine nobody ran.
    async def explain(outcome: object) -> str:
        await anyio.sleep(0)
        return describe_refusal(outcome)

    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:

        @require_approval(agent, action_type="file_delete", on_refused=explain)
        async def remove(resource: str) -> str:
            raise AssertionError("must not run")

        assert (await remove("docs/x")).startswith("denied by policy: ")

    # A sync tool cannot await it: refused when decorated, not a coroutine nobody runs.
    with pytest.raises(TypeError):

        @require_approval(agent, on_refused=explain)
        def remove_now(resource: str) -> str:
            raise AssertionError("must not run")


def test_a_request_id_from_the_call_makes_a_rerun_find_its_approval(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    runs: list[str] = []

    @require_approval(agent, request_id=lambda resource, call_id: call_id, context=lambda resource, call_id: {"call": call_id})
    def document_read(resource: str, call_id: str) -> str:
        runs.append(call_id)
        return "ok"

    helper = Reviewer(reviewer, verdict="accept")
    helper.start()
    assert document_read("hr/reviews", "call-7") == "ok"
    (decided,) = helper.finish()
    assert decided.id == "call-7" and decided.context == {"call": "call-7"}
    # The same call again (an agent re-running a step) finds the accepted approval: no new park.
    assert document_read("hr/reviews", "call-7") == "ok"
    assert runs == ["call-7", "call-7"] and reviewer.list().items == []
    assert [a.id for a in reviewer.list("accepted").items] == ["call-7"]


def test_the_guard_on_an_expiring_tenant_refuses_with_expired(service: Service, expiring_tenant: Tenant) -> None:
    with ApprovalsClient(service.base_url, expiring_tenant.agent_token, expiring_tenant.name) as agent:

        @require_approval(agent)
        def secrets_get(resource: str) -> str:
            raise AssertionError("must not run")

        with pytest.raises(ApprovalRefused) as refused:
            secrets_get("vault/db")
        assert isinstance(refused.value.outcome, Expired)


@pytest.mark.anyio
async def test_async_functions_with_either_client(service: Service, tenant: Tenant, reviewer: ApprovalsClient) -> None:
    async with AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:

        @require_approval(agent, timeout=30)
        async def document_read(resource: str) -> str:
            await anyio.sleep(0)
            return resource.upper()

        helper = Reviewer(reviewer, verdict="accept")
        helper.start()
        assert await document_read("legal/nda.pdf") == "LEGAL/NDA.PDF"
        helper.finish()

        @require_approval(agent)
        async def file_delete(resource: str) -> None:
            raise AssertionError("must not run")

        with pytest.raises(ApprovalRefused):
            await file_delete("docs/a")

    with ApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as sync_agent:

        @require_approval(sync_agent)
        async def document_fetch(resource: str) -> str:
            return "fetched"

        assert await document_fetch("docs/handbook.md") == "fetched"

        @require_approval(lambda: AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name))
        def not_async(resource: str) -> None:
            raise AssertionError("must not run")

        with pytest.raises(TypeError):
            not_async("docs/a")


def test_the_policy_sees_what_the_function_gets_or_nothing_runs(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    calls: list[object] = []

    @require_approval(agent, timeout=30)
    def document_read(resource: object) -> None:
        calls.append(resource)

    # A path is sent as its text, so the policy's `finance/` rule sees it (its repr,
    # "PosixPath('finance/q3')", was allowed as something else).
    helper = Reviewer(reviewer, verdict="accept")
    helper.start()
    document_read(Path("finance/q3"))
    (decided,) = helper.finish()
    assert decided.action == {"type": "document_read", "resource": "finance/q3"}

    # Anything else that is not JSON is refused before anything is sent or run.
    class Opaque:
        pass

    with pytest.raises(TypeError, match="'resource'"):
        document_read(Opaque())
    assert calls == [Path("finance/q3")]

    # An argument named `type` would be the action's type: refused when decorating.
    with pytest.raises(TypeError, match="'type'"):

        @require_approval(agent)
        def transfer(type: str, account: str) -> None:
            pass


def test_a_client_factory_is_called_once_not_per_call(agent: ApprovalsClient) -> None:
    made: list[ApprovalsClient] = []

    def factory() -> ApprovalsClient:
        made.append(agent)
        return agent

    @require_approval(factory)
    def document_read(resource: str) -> str:
        return resource

    assert [document_read("docs/a.md"), document_read("docs/b.md")] == ["docs/a.md", "docs/b.md"]
    assert len(made) == 1, "a client (and its connection pool) per call, never closed"


@pytest.mark.anyio
async def test_an_async_client_from_a_factory_is_closed_after_each_call(service: Service, tenant: Tenant) -> None:
    made: list[AsyncApprovalsClient] = []

    def factory() -> AsyncApprovalsClient:
        made.append(AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name))
        return made[-1]

    @require_approval(factory)
    async def document_read(resource: str) -> str:
        return resource

    @require_approval(factory)
    async def file_delete(resource: str) -> None:
        raise AssertionError("must not run")

    assert [await document_read(f"docs/{n}.md") for n in range(3)] == ["docs/0.md", "docs/1.md", "docs/2.md"]
    with pytest.raises(ApprovalRefused):
        await file_delete("docs/a.md")

    # A sync function cannot use one: refused, and the client made for it is closed too.
    @require_approval(factory)
    def not_async(resource: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(TypeError):
        not_async("docs/a.md")
    # Each was left open (its connection pool with it), one per call.
    assert len(made) == 5 and all(client._http.is_closed for client in made)


@pytest.mark.anyio
async def test_a_cancelled_async_call_stops_the_wait_of_its_sync_client(
    service: Service, tenant: Tenant, reviewer: ApprovalsClient
) -> None:
    transport = CountingPolls()
    with httpx.Client(transport=transport) as http:
        agent = ApprovalsClient(service.base_url, tenant.agent_token, tenant.name, http=http, poll_seconds=1)

        @require_approval(agent)
        async def document_read(resource: str) -> None:
            raise AssertionError("must not run")

        try:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(1.5):
                    await document_read("finance/q3-report")
            # The poll in flight when the caller left may end; none is asked after it. The
            # thread used to poll on until a reviewer decided or the approval expired (24 h).
            await anyio.sleep(1.5)
            after_cancel = transport.polls
            await anyio.sleep(2.5)
            assert after_cancel >= 1 and transport.polls == after_cancel
        finally:
            for approval in reviewer.list().items:  # ends a wait that did not stop
                reviewer.reject(approval.id)


class Shelf(enum.Enum):
    FINANCE = "finance"


def test_nan_and_infinity_are_refused_before_anything_is_sent(service: Service, tenant: Tenant) -> None:
    # json.dumps writes them (as `NaN`, which is no JSON), so the guard's check let them by.
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        agent = ApprovalsClient(service.base_url, tenant.agent_token, tenant.name, http=http)

        @require_approval(agent)
        def document_read(resource: str, limit: object = None) -> None:
            raise AssertionError("must not run")

        for limit in (math.nan, math.inf, -math.inf, [1.0, math.nan], {"max": math.inf}):
            with pytest.raises(TypeError, match="'limit'"):
                document_read("finance/q3", limit)
    assert sent == []


def test_paths_times_uuids_and_enums_are_sent_as_text_however_deep(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    calls: list[object] = []

    @require_approval(agent, timeout=30)
    def document_read(resource: str, attachments: object, meta: object) -> None:
        calls.append(attachments)

    helper = Reviewer(reviewer, verdict="accept")
    helper.start()
    document_read(
        "finance/q3",
        [Path("finance/a.pdf"), (Shelf.FINANCE, datetime.date(2026, 1, 2))],
        {"id": uuid.UUID(int=1), "opened": {"at": datetime.datetime(2026, 1, 2, 3, 4, 5)}},
    )
    (decided,) = helper.finish()
    assert decided.action == {
        "type": "document_read",
        "resource": "finance/q3",
        "attachments": ["finance/a.pdf", ["finance", "2026-01-02"]],
        "meta": {"id": "00000000-0000-0000-0000-000000000001", "opened": {"at": "2026-01-02T03:04:05"}},
    }
    assert len(calls) == 1

    # Still refused: what JSON cannot hold, or would change (a key 1 becomes "1").
    looped: list[object] = []
    looped.append(looped)
    for argument in ({1: "one"}, [object()], looped, {"set"}):
        with pytest.raises(TypeError, match="'meta'"):
            document_read("finance/q3", [], argument)
    assert len(calls) == 1


def test_arguments_changed_during_the_wait_refuse_the_call(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    # The reviewer approved the pages as submitted; the function used to run with whatever the
    # caller's list held by the time the decision came.
    runs: list[list[int]] = []

    @require_approval(agent, timeout=30)
    def document_read(resource: str, pages: list[int]) -> None:
        runs.append(list(pages))

    pages = [1, 2]
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["value"] = document_read("finance/q3-report", pages)
        except BaseException as error:  # reported below
            result["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    try:
        until(lambda: bool(reviewer.list().items), what="the call's approval parked")
        pages.append(99)
        (parked,) = reviewer.list().items
        assert parked.action["pages"] == [1, 2]
        reviewer.accept(parked.id, action_digest=parked.action_digest)
    finally:
        caller.join(30)
    assert not caller.is_alive()
    assert runs == []
    error = result.get("error")
    assert isinstance(error, ApprovalRefused), result
    assert isinstance(error.outcome, ActionChanged) and isinstance(error.outcome.outcome, Approved)
    assert error.outcome.action["pages"] == [1, 2, 99]
    assert "changed" in describe_refusal(error.outcome)


def test_a_wait_past_the_timeout_goes_to_on_refused(agent: ApprovalsClient) -> None:
    # It was raised as WaitTimeout past `on_refused`, which crashed a LangGraph run.
    @require_approval(agent, timeout=1, on_refused=describe_refusal)
    def document_read(resource: str) -> str:
        raise AssertionError("must not run")

    answer = document_read("finance/q3-report")
    assert answer.startswith("no reviewer decided within the tool's timeout"), answer

    seen: list[object] = []

    @require_approval(agent, timeout=1, on_refused=seen.append)
    def secrets_get(resource: str) -> str:
        raise AssertionError("must not run")

    secrets_get("vault/db")
    (outcome,) = seen
    assert isinstance(outcome, TimedOut) and not outcome.permitted and outcome.approval.status is Status.PENDING

    # Without on_refused the caller is told as before.
    @require_approval(agent, timeout=1)
    def payroll_read(resource: str) -> str:
        raise AssertionError("must not run")

    with pytest.raises(WaitTimeout):
        payroll_read("hr/payroll")


@pytest.mark.anyio
async def test_an_object_with_an_async_call_is_guarded_as_async(service: Service, tenant: Tenant) -> None:
    # `inspect.iscoroutinefunction` is False for it: the guard took it for a sync function and
    # waited in the event loop's thread, so the reviewer below, in the same loop, never ran.
    class Reader:
        async def __call__(self, resource: str) -> str:
            await anyio.sleep(0)
            return resource.upper()

    with ApprovalsClient(service.base_url, tenant.agent_token, tenant.name) as agent:
        document_read = require_approval(agent, action_type="document_read", timeout=5)(Reader())
        answers: list[str] = []

        async def call() -> None:
            answers.append(await document_read("finance/q3-report"))

        async with AsyncApprovalsClient(service.base_url, tenant.reviewer_token, tenant.name) as reviewer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(20):
                    while not (items := (await reviewer.list()).items):
                        await anyio.sleep(0.05)
                await reviewer.accept(items[0].id)
    assert answers == ["FINANCE/Q3-REPORT"]
    assert inspect.iscoroutinefunction(document_read)  # frameworks await it


def refusing_submits(status: int, code: str, posts: list[float]) -> httpx.MockTransport:
    """A service that answers every submit with the problem `status` `code` (a `503` until the
    outage ends, which it does not here); `posts` gets the time of each."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST", request
        posts.append(time.monotonic())
        body = {"type": f"urn:approvals:problem:{code}", "title": code, "status": status, "detail": code, "code": code}
        return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})

    return httpx.MockTransport(answer)


def test_a_timeout_that_passes_during_the_submit_goes_to_on_refused() -> None:
    """The submit's retries through an outage stop at the guard's `timeout`; their last error
    (`503 backend_unavailable`) was raised past `on_refused` and ended the agent's run, where
    the same outage during the wait gave a `TimedOut`. Nothing answered: no approval."""
    posts: list[float] = []
    seen: list[object] = []
    with httpx.Client(transport=refusing_submits(503, "backend_unavailable", posts)) as http:
        client = ApprovalsClient("http://approvals.test", "t", "acme", http=http)

        @require_approval(client, timeout=1, on_refused=seen.append)
        def document_read(resource: str) -> str:
            raise AssertionError("must not run")

        started = time.monotonic()
        document_read("finance/q3-report")
        assert time.monotonic() - started < 10, "the retries stopped at the deadline"
        (outcome,) = seen
        assert isinstance(outcome, TimedOut) and not outcome.permitted and outcome.approval is None
        assert len(posts) > 1, "retried until the deadline"
        assert "did not answer" in describe_refusal(outcome)

        # Without on_refused the caller is told what ended the submit, as before.
        @require_approval(client, timeout=1)
        def payroll_read(resource: str) -> str:
            raise AssertionError("must not run")

        with pytest.raises(ApiError) as raised:
            payroll_read("hr/payroll")
        assert (raised.value.status, raised.value.code) == (503, "backend_unavailable")


def test_a_timeout_that_passes_while_the_service_is_unreachable_goes_to_on_refused() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused (test)", request=request)

    seen: list[object] = []
    with httpx.Client(transport=httpx.MockTransport(unreachable)) as http:
        client = ApprovalsClient("http://approvals.test", "t", "acme", http=http)
        document_read = require_approval(client, action_type="document_read", timeout=1, on_refused=seen.append)(lambda resource: resource)
        document_read("finance/q3-report")
        (outcome,) = seen
        assert isinstance(outcome, TimedOut) and outcome.approval is None

        raising = require_approval(client, action_type="document_read", timeout=1)(lambda resource: resource)
        with pytest.raises(TransportError):
            raising("finance/q3-report")


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_body"), (403, "forbidden"), (409, "request_id_conflict"), (429, "too_many_pending")])
def test_a_submit_refused_for_good_is_raised_past_on_refused_whatever_the_timeout(status: int, code: str) -> None:
    # Not retried, so no deadline ended it: the agent's run must hear of it.
    posts: list[float] = []
    with httpx.Client(transport=refusing_submits(status, code, posts)) as http:
        client = ApprovalsClient("http://approvals.test", "t", "acme", http=http)
        document_read = require_approval(client, action_type="document_read", timeout=1, on_refused=lambda o: o)(lambda resource: resource)
        with pytest.raises(ApiError) as raised:
            document_read("finance/q3-report")
    assert (raised.value.status, raised.value.code, len(posts)) == (status, code, 1)


def test_a_submit_whose_retry_policy_gives_up_before_the_timeout_is_raised() -> None:
    # The policy's budget (here two attempts), not the deadline, ended it: the outage's error.
    posts: list[float] = []
    with httpx.Client(transport=refusing_submits(503, "backend_unavailable", posts)) as http:
        client = ApprovalsClient("http://approvals.test", "t", "acme", http=http, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
        document_read = require_approval(client, action_type="document_read", timeout=30, on_refused=lambda o: o)(lambda resource: resource)
        with pytest.raises(ApiError):
            document_read("finance/q3-report")
    assert len(posts) == 2


@pytest.mark.anyio
async def test_the_async_guard_takes_a_timeout_during_the_submit_to_on_refused_too() -> None:
    posts: list[float] = []
    seen: list[object] = []
    async with httpx.AsyncClient(transport=refusing_submits(503, "backend_unavailable", posts)) as http:
        client = AsyncApprovalsClient("http://approvals.test", "t", "acme", http=http)

        @require_approval(client, timeout=1, on_refused=seen.append)
        async def document_read(resource: str) -> str:
            raise AssertionError("must not run")

        await document_read("finance/q3-report")
    (outcome,) = seen
    assert isinstance(outcome, TimedOut) and outcome.approval is None and len(posts) > 1
