"""Exceptions: the service's problems, a wait that ran out, and a guard's refusal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Approval, GuardOutcome, Problem


class ApprovalsError(Exception):
    """Base class of every error this package raises.

    Raised by `submit` or `submit_and_wait`, it names the call's `request_id` (generated when
    the caller gave none), and once the action was parked the `approval_id`: an attempt whose
    answer was lost may have parked the approval, and a submit again with that `request_id`
    finds it rather than parking a second one. Both are None elsewhere.
    """

    request_id: str | None = None
    approval_id: str | None = None
    retry_after: float | None = None
    """The answer's `Retry-After` in seconds, when it had one."""
    # Whether the call's retries of what may pass (a `503`, a proxy's `429`, a dropped
    # connection...) ended because the next would have started past the caller's deadline,
    # not because the retry policy gave up: the guard takes such a submit for its `timeout`
    # passing (`TimedOut`), as it takes a wait's.
    _deadline_passed = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message and attributes, not by calling `__init__` again: the
        # subclasses' constructors take other arguments than `args` (an error sent to another
        # process, or copied, used to fail with a TypeError instead).
        return (_rebuilt, (type(self), self.args), self.__dict__)


def _rebuilt(cls: type[ApprovalsError], args: tuple[Any, ...]) -> ApprovalsError:
    """An error of `cls` with `args` and nothing else yet; pickle then restores its attributes."""
    return cls.__new__(cls, *args)


class ApiError(ApprovalsError):
    """The service answered with an error (RFC 9457 problem+json).

    `code` is the service's stable, machine-readable code (`not_found`, `already_decided`,
    `backend_unavailable`, ...); `title` and `detail` come from the same body; `status` is the
    answer's HTTP status.
    """

    def __init__(self, status: int, code: str, title: str, detail: str, problem: Problem | None = None) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.problem = problem
        self.attempts = 1
        """How many attempts the call made (more than 1 after retries)."""
        # Whether an earlier attempt may have been carried out though its answer never came
        # (lost, or 408/502/503/504); a 429 `too_many_requests` was refused before it did anything.
        self._earlier_may_have_acted = False
        super().__init__(f"{status} {code}: {detail or title}")

    @property
    def approval(self) -> Approval | None:
        """The current record, sent with `already_decided` and `expired`."""
        return self.problem.approval if self.problem is not None else None


class ProtocolError(ApprovalsError):
    """The service (or something in front of it) answered with what this client cannot read:
    not JSON, a field missing, a status it does not know. Nothing is assumed from it.

    `status` is the HTTP status when the answer was an error whose body is no problem of the
    service's (a proxy's HTML error page, an empty `502`), else None."""

    status: int | None = None


class TransportError(ApprovalsError):
    """The service could not be reached (after every retry)."""

    # Whether it may go away by itself (a refused or dropped connection, a timeout), as
    # opposed to a URL that is no URL: a wait goes on through the former.
    _transient = False


class WaitTimeout(ApprovalsError):
    """The caller's deadline passed while the approval was still pending. It stays parked: a
    later `wait` on the same id (or a `submit` with the same `request_id`) picks it up."""

    def __init__(self, approval: Approval) -> None:
        self.approval = approval
        super().__init__(f"approval {approval.id} is still pending")


class ApprovalRefused(ApprovalsError):
    """Raised by the guard when the action may not run: denied, rejected or expired, or the
    call's arguments changed while it waited (`ActionChanged`)."""

    def __init__(self, outcome: GuardOutcome) -> None:
        self.outcome = outcome
        super().__init__(describe_refusal(outcome))

    @property
    def reasons(self) -> list[str]:
        reasons = getattr(self.outcome, "reasons", None)
        if reasons is not None:
            return list(reasons)
        reason = getattr(self.outcome, "reason", None)
        return [reason] if reason else []


def describe_refusal(outcome: GuardOutcome) -> str:
    """A one-line account of why an action may not run, e.g. for a tool's answer to a model."""
    kind = outcome.kind
    if kind == "denied":
        return "denied by policy: " + "; ".join(getattr(outcome, "reasons", []) or ["no reason given"])
    reason = getattr(outcome, "reason", None)
    if kind == "rejected":
        return "rejected by a reviewer" + (f": {reason}" if reason else "")
    if kind == "expired":
        return "no reviewer decided in time (expired)"
    if kind == "timed_out":
        if getattr(outcome, "approval", None) is None:
            return "the approvals service did not answer within the tool's timeout (the action was not approved)"
        return "no reviewer decided within the tool's timeout (the approval is still pending)"
    if kind == "action_changed":
        return "not run: the arguments changed while waiting for approval (what was approved is not what would run)"
    return kind
