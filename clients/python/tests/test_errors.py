"""The package's errors survive pickling and copying (a worker process sends them to its parent,
a framework copies them): each comes back with its code, status, approval and ids. Before,
unpickling called the subclass's `__init__` with the message alone, and failed."""

from __future__ import annotations

import copy
import pickle
from typing import Callable

import pytest
from conftest import SENSITIVE_READ, WRITE

from approvals_client import (
    ApiError,
    ApprovalRefused,
    ApprovalsClient,
    ApprovalsError,
    ProtocolError,
    TransportError,
    WaitTimeout,
    require_approval,
)
from approvals_client._core import Abandoned

ROUND_TRIPS: list[Callable[[ApprovalsError], ApprovalsError]] = [
    lambda error: pickle.loads(pickle.dumps(error)),
    copy.copy,
    copy.deepcopy,
]


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_the_services_errors_round_trip(
    agent: ApprovalsClient, reviewer: ApprovalsClient, round_trip: Callable[[ApprovalsError], ApprovalsError]
) -> None:
    agent.submit(SENSITIVE_READ, request_id="decided-once")
    reviewer.accept("decided-once", reason="mine")
    with pytest.raises(ApiError) as twice:
        reviewer.reject("decided-once")
    again = round_trip(twice.value)
    assert type(again) is ApiError and str(again) == str(twice.value)
    assert (again.status, again.code, again.title, again.detail) == (409, "already_decided", twice.value.title, twice.value.detail)
    assert again.approval == twice.value.approval and again.approval is not None
    assert again.approval.decision_reason == "mine" and again.attempts == 1

    agent.submit(SENSITIVE_READ, request_id="still-pending")
    with pytest.raises(WaitTimeout) as timed_out:
        agent.wait("still-pending", timeout=1, poll_seconds=1)
    again = round_trip(timed_out.value)
    assert type(again) is WaitTimeout and again.approval == timed_out.value.approval
    assert again.approval.id == "still-pending"

    @require_approval(agent)
    def file_delete(resource: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(ApprovalRefused) as refused:
        file_delete(WRITE["resource"])
    again = round_trip(refused.value)
    assert type(again) is ApprovalRefused and again.outcome == refused.value.outcome
    assert again.reasons == refused.value.reasons and again.reasons


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_the_clients_own_errors_round_trip(round_trip: Callable[[ApprovalsError], ApprovalsError]) -> None:
    unreadable = ProtocolError("GET /x: 502 Bad Gateway")
    unreadable.status = 502
    unreachable = TransportError("GET /x: ConnectError()")
    unreachable.request_id, unreachable.approval_id = "req-1", "req-1"
    for error in (unreadable, unreachable, ApprovalsError("base"), Abandoned("the caller has gone")):
        again = round_trip(error)
        assert type(again) is type(error) and again.args == error.args
        assert vars(again) == vars(error)
    assert round_trip(unreadable).status == 502  # type: ignore[attr-defined]
    assert (round_trip(unreachable).request_id, round_trip(unreachable).approval_id) == ("req-1", "req-1")
