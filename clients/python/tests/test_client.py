"""The sync client against the real service: every call, outcomes, errors, waits, expiry."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from conftest import PLAIN_READ, SENSITIVE_READ, WRITE, Service, Tenant
from helpers import Reviewer, until

from approvals_client import (
    Allowed,
    ApiError,
    Approval,
    ApprovalsClient,
    Approved,
    Decision,
    Denied,
    Expired,
    Rejected,
    Status,
    WaitTimeout,
)


def test_submit_answers_allow_and_deny_at_once_and_parks_the_rest(agent: ApprovalsClient) -> None:
    allowed = agent.submit(PLAIN_READ)
    assert allowed.decision is Decision.ALLOW and allowed.approval is None
    assert isinstance(allowed.outcome(), Allowed) and allowed.outcome().permitted  # type: ignore[union-attr]

    denied = agent.submit(WRITE)
    outcome = denied.outcome()
    assert isinstance(outcome, Denied) and not outcome.permitted
    assert outcome.reasons and outcome.policy_version

    parked = agent.submit(SENSITIVE_READ, request_id="parked-1", context={"ticket": "T-1"})
    assert parked.decision is Decision.REQUIRE_APPROVAL and parked.created
    assert parked.outcome() is None
    approval = parked.approval
    assert approval is not None and approval.id == "parked-1" and approval.status is Status.PENDING
    assert approval.action == SENSITIVE_READ and approval.context == {"ticket": "T-1"}
    assert approval.expires_at > approval.submitted_at

    again = agent.submit(SENSITIVE_READ, request_id="parked-1", context={"ticket": "T-1"})
    assert not again.created and again.approval is not None and again.approval.id == "parked-1"

    got = agent.get("parked-1")
    assert got == approval


def test_a_submit_without_request_id_gets_one_before_it_is_sent(agent: ApprovalsClient) -> None:
    parked = agent.submit(SENSITIVE_READ)
    assert re.fullmatch(r"[0-9a-f]{32}", parked.request_id)
    assert parked.approval is not None and parked.approval.id == parked.request_id


def test_wait_returns_approved_when_a_reviewer_accepts(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    parked = agent.submit(SENSITIVE_READ, request_id="accept-me")
    result: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: result.update(outcome=agent.wait("accept-me", timeout=30)))
    waiter.start()
    assert parked.approval is not None
    decided = reviewer.accept("accept-me", reason="fine", action_digest=parked.approval.action_digest)
    assert decided.status is Status.ACCEPTED and decided.decided_by == f"{reviewer.tenant}-reviewer"
    waiter.join(30)
    outcome = result["outcome"]
    assert isinstance(outcome, Approved) and outcome.permitted and outcome.reason == "fine"


def test_submit_and_wait_returns_rejected_with_the_reason(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    helper = Reviewer(reviewer, verdict="reject", reason="not this quarter")
    helper.start()
    outcome = agent.submit_and_wait(SENSITIVE_READ, timeout=30)
    helper.finish()
    assert isinstance(outcome, Rejected) and not outcome.permitted
    assert outcome.reason == "not this quarter"
    # Allowed and denied need no wait.
    assert isinstance(agent.submit_and_wait(PLAIN_READ), Allowed)
    assert isinstance(agent.submit_and_wait(WRITE), Denied)


def test_a_decision_made_between_two_long_polls_is_found_by_the_next(
    service: Service, tenant: Tenant, reviewer: ApprovalsClient
) -> None:
    polls: list[tuple[int, Status, float]] = []

    class Watched(ApprovalsClient):
        def poll(self, approval_id: str, wait_seconds: int, **kwargs: Any) -> Approval:
            started = time.monotonic()
            approval = super().poll(approval_id, wait_seconds, **kwargs)
            polls.append((wait_seconds, approval.status, time.monotonic() - started))
            if len(polls) == 1:
                # The first long-poll is over and the next has not started: decide now.
                reviewer.accept(approval_id, reason="between polls")
            return approval

    # Polls of 3 s: "at once" is told from "waited" with room for a loaded machine.
    with Watched(service.base_url, tenant.agent_token, tenant.name, poll_seconds=3) as agent:
        agent.submit(SENSITIVE_READ, request_id="between-polls")
        outcome = agent.wait("between-polls", timeout=30)
    assert isinstance(outcome, Approved) and outcome.reason == "between polls"
    assert [(w, s) for w, s, _ in polls] == [(3, Status.PENDING), (3, Status.ACCEPTED)]
    assert polls[0][2] >= 2.9, "the first poll should have waited its 3 s"
    assert polls[1][2] < 2.0, "the second poll should have answered at once"


def test_wait_resumes_across_polls_until_the_callers_deadline(service: Service, tenant: Tenant) -> None:
    polls: list[int] = []

    class Counting(ApprovalsClient):
        def poll(self, approval_id: str, wait_seconds: int, **kwargs: Any) -> Approval:
            polls.append(wait_seconds)
            return super().poll(approval_id, wait_seconds, **kwargs)

    with Counting(service.base_url, tenant.agent_token, tenant.name, poll_seconds=1) as agent:
        agent.submit(SENSITIVE_READ, request_id="slow-review")
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as raised:
            agent.wait("slow-review", timeout=2.5)
        elapsed = time.monotonic() - started
    assert raised.value.approval.status is Status.PENDING
    assert len(polls) >= 3 and all(w <= 1 for w in polls), polls
    assert 2.4 <= elapsed < 20, elapsed


def test_expiry_is_an_outcome_and_a_late_decision_is_refused(service: Service, expiring_tenant: Tenant) -> None:
    t = expiring_tenant
    with ApprovalsClient(service.base_url, t.agent_token, t.name) as agent, ApprovalsClient(
        service.base_url, t.reviewer_token, t.name
    ) as reviewer:
        started = time.monotonic()
        outcome = agent.submit_and_wait(SENSITIVE_READ, request_id="too-slow", timeout=30)
        assert isinstance(outcome, Expired) and not outcome.permitted
        assert outcome.approval.status is Status.EXPIRED
        assert 1.5 < time.monotonic() - started < 30
        with pytest.raises(ApiError) as late:
            reviewer.accept("too-slow")
        assert late.value.status == 410 and late.value.code == "expired"
        assert late.value.approval is not None and late.value.approval.status is Status.EXPIRED
        assert [a.id for a in reviewer.list("expired").items] == ["too-slow"]


def test_list_pages_and_statuses(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    for n in range(5):
        agent.submit(SENSITIVE_READ, request_id=f"list-{n}")
    first = reviewer.list(limit=2)
    assert [a.id for a in first.items] == ["list-0", "list-1"] and first.next_cursor
    second = reviewer.list(Status.PENDING, limit=2, cursor=first.next_cursor)
    assert [a.id for a in second.items] == ["list-2", "list-3"]
    assert [a.id for a in reviewer.list_all(page_size=2)] == [f"list-{n}" for n in range(5)]
    reviewer.accept("list-1")
    reviewer.reject("list-3", reason="no")
    assert [a.id for a in reviewer.list("accepted").items] == ["list-1"]
    assert [a.id for a in reviewer.list(Status.REJECTED).items] == ["list-3"]
    assert [a.id for a in reviewer.list_all()] == ["list-0", "list-2", "list-4"]


def test_errors_carry_the_problem_code(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    with pytest.raises(ApiError) as missing:
        agent.get("no-such-approval")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.title and missing.value.detail and missing.value.problem is not None

    agent.submit(SENSITIVE_READ, request_id="conflict")
    with pytest.raises(ApiError) as conflict:
        agent.submit({"type": "document_read", "resource": "hr/salaries"}, request_id="conflict")
    assert (conflict.value.status, conflict.value.code) == (409, "request_id_conflict")

    with pytest.raises(ApiError) as forbidden:
        agent.list()
    assert forbidden.value.status == 403

    reviewer.accept("conflict")
    with pytest.raises(ApiError) as twice:
        reviewer.reject("conflict")
    assert twice.value.code == "already_decided"
    assert twice.value.approval is not None and twice.value.approval.status is Status.ACCEPTED

    with pytest.raises(ApiError) as invalid:
        agent.get("not a valid id!")
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_identifier")

    with pytest.raises(ValueError):
        agent.submit({"resource": "no type"})


def test_a_repeated_request_id_of_a_decided_approval_answers_its_outcome(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    agent.submit(SENSITIVE_READ, request_id="decided-before")
    reviewer.accept("decided-before")
    again = agent.submit(SENSITIVE_READ, request_id="decided-before")
    assert not again.created and isinstance(again.outcome(), Approved)
    assert isinstance(agent.submit_and_wait(SENSITIVE_READ, request_id="decided-before"), Approved)


def test_live_events_show_parking_and_deciding_in_order_and_resume(agent: ApprovalsClient, reviewer: ApprovalsClient) -> None:
    seen: list = []
    done = threading.Event()

    def watch() -> None:
        for event in reviewer.events():
            seen.append(event)
            if event.data.approval_id == "watched" and event.event == "decided":
                break
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    # The stream sends what is recorded once it is open: park probes until one shows up.
    n = 0

    def stream_is_live() -> bool:
        nonlocal n
        n += 1
        agent.submit(SENSITIVE_READ, request_id=f"probe-{n}")
        time.sleep(0.2)
        return any(e.data.approval_id.startswith("probe-") for e in seen)

    until(stream_is_live, what="the live stream to open")
    agent.submit(SENSITIVE_READ, request_id="watched")
    reviewer.accept("watched", reason="seen live")
    assert done.wait(20), [(e.event, e.data.approval_id) for e in seen]
    mine = [e for e in seen if e.data.approval_id == "watched"]
    assert [e.event for e in mine] == ["parked", "decided"]
    assert mine[0].data.kind == "submitted" and mine[1].data.kind == "accepted"
    assert mine[1].data.actor == f"{reviewer.tenant}-reviewer" and mine[0].id == mine[0].data.event_id

    # Resuming after the parked event starts with the decision.
    resumed = reviewer.events(last_event_id=mine[0].id)
    first = next(resumed)
    resumed.close()
    assert (first.event, first.data.approval_id, first.id) == ("decided", "watched", mine[1].id)
