"""The service's objects (as in its `/openapi.json`) and the typed outcomes of a request.

Records are frozen dataclasses built from the JSON the service sends; unknown members a newer
service may add are kept in ``extra`` rather than rejected, so an older client keeps working.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping, Union

JsonObject = dict[str, Any]


class Status(str, enum.Enum):
    """An approval's status (`Status` in the document)."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Decision(str, enum.Enum):
    """The policy's answer to a submit (`PolicyDecision` in the document)."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


class AuditKind(str, enum.Enum):
    """What an audit event records (`AuditKind` in the document)."""

    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"
    MIGRATED = "migrated"
    POLICY = "policy"


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python before 3.11 accepts at most 6 fractional digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    return datetime.fromisoformat(text)


def _split(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "raw")}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


@dataclass(frozen=True)
class Approval:
    """A parked action and its fate (`Approval` in the document)."""

    id: str
    tenant: str
    status: Status
    agent_id: str
    submitted_by: str
    action: JsonObject
    context: JsonObject
    reasons: list[str]
    policy_version: str
    submitted_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    action_digest: str | None = None
    extra: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def decided(self) -> bool:
        return self.status is not Status.PENDING

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Approval:
        known, extra = _split(cls, data)
        known["status"] = Status(known["status"])
        for key in ("submitted_at", "expires_at", "decided_at"):
            known[key] = _timestamp(known.get(key))
        known.setdefault("context", {})
        known.setdefault("reasons", [])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class SubmitResponse:
    """The answer to a submit (`SubmitResponse` in the document), plus what the client knows:
    the `request_id` it sent (generated when the caller gave none) and `created`, whether the
    call's final answer was `201` (the approval was parked by that attempt) rather than `200`
    (one was found parked under the same `request_id`). `created` False does not mean that
    someone else parked it: an earlier attempt of this very call, whose answer was lost, may
    have, and its retry is answered `200`. Nothing in the answer tells the two apart."""

    decision: Decision
    reasons: list[str]
    policy_version: str
    approval: Approval | None = None
    request_id: str = ""
    created: bool = False
    extra: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, request_id: str = "", created: bool = False) -> SubmitResponse:
        known, extra = _split(cls, data)
        known["decision"] = Decision(known["decision"])
        if known.get("approval") is not None:
            known["approval"] = Approval.from_json(known["approval"])
        known.pop("request_id", None)
        known.pop("created", None)
        return cls(**known, request_id=request_id, created=created, extra=extra)

    def outcome(self) -> Outcome | None:
        """`Allowed` or `Denied` when the policy answered at once; for a parked action, the
        outcome of its approval if it is already decided (a repeated `request_id`), else None."""
        if self.decision is Decision.ALLOW:
            return Allowed(reasons=list(self.reasons), policy_version=self.policy_version)
        if self.decision is Decision.DENY:
            return Denied(reasons=list(self.reasons), policy_version=self.policy_version)
        if self.approval is not None and self.approval.decided:
            return outcome_of(self.approval)
        return None


@dataclass(frozen=True)
class ApprovalPage:
    """One page of a list (`ApprovalPage` in the document)."""

    items: list[Approval]
    next_cursor: str | None = None
    extra: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalPage:
        known, extra = _split(cls, data)
        known["items"] = [Approval.from_json(item) for item in known.get("items", [])]
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class AuditEvent:
    """One entry of a tenant's audit, as the live stream sends it (`AuditEvent` in the document)."""

    event_id: str
    timestamp: datetime
    tenant: str
    approval_id: str
    kind: AuditKind | str
    actor: str
    details: Any
    extra: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEvent:
        known, extra = _split(cls, data)
        known["timestamp"] = _timestamp(known["timestamp"])
        try:
            known["kind"] = AuditKind(known["kind"])
        except ValueError:
            pass  # a kind this client does not know yet stays a string
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class LiveEvent:
    """An event of the live stream: `event` is its name (`parked`, `decided`, `expired`), `id`
    the audit event id to resume after, `data` the audit event."""

    event: str
    id: str | None
    data: AuditEvent


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 error body (`Problem` in the document)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    approval: Approval | None = None
    errors: list[str] | None = None
    extra: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        known, extra = _split(cls, data)
        if known.get("approval") is not None:
            known["approval"] = Approval.from_json(known["approval"])
        known.setdefault("type", "about:blank")
        known.setdefault("title", "")
        known.setdefault("detail", "")
        known.setdefault("code", "")
        return cls(**known, extra=extra)


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """The policy allowed the action: go ahead."""

    reasons: list[str]
    policy_version: str
    kind: Literal["allowed"] = "allowed"

    @property
    def permitted(self) -> bool:
        return True


@dataclass(frozen=True)
class Denied:
    """The policy denied the action: do not act; `reasons` say why."""

    reasons: list[str]
    policy_version: str
    kind: Literal["denied"] = "denied"

    @property
    def permitted(self) -> bool:
        return False


@dataclass(frozen=True)
class Approved:
    """A reviewer accepted the parked action: go ahead."""

    approval: Approval
    kind: Literal["approved"] = "approved"

    @property
    def permitted(self) -> bool:
        return True

    @property
    def reason(self) -> str | None:
        return self.approval.decision_reason


@dataclass(frozen=True)
class Rejected:
    """A reviewer rejected the parked action: do not act; `reason` is theirs."""

    approval: Approval
    kind: Literal["rejected"] = "rejected"

    @property
    def permitted(self) -> bool:
        return False

    @property
    def reason(self) -> str | None:
        return self.approval.decision_reason


@dataclass(frozen=True)
class Expired:
    """Nobody decided before the approval's deadline: an automatic rejection."""

    approval: Approval
    kind: Literal["expired"] = "expired"

    @property
    def permitted(self) -> bool:
        return False

    @property
    def reason(self) -> str | None:
        return self.approval.decision_reason


Outcome = Union[Allowed, Denied, Approved, Rejected, Expired]
"""What became of a request: check `permitted`, or match on the class."""


@dataclass(frozen=True)
class ActionChanged:
    """The guard's refusal of a call whose arguments changed while it waited (a list or dict
    the caller mutated meanwhile): `outcome` allowed or approved the action that was sent, not
    the `action` the function would now act on, so the function does not run."""

    outcome: Outcome
    action: JsonObject
    kind: Literal["action_changed"] = "action_changed"

    @property
    def permitted(self) -> bool:
        return False

    @property
    def reason(self) -> str | None:
        return "the call's arguments changed while it waited for approval"


@dataclass(frozen=True)
class TimedOut:
    """The guard's refusal when its `timeout` passed with the approval still pending (given
    an `on_refused`; else `WaitTimeout` is raised): the function does not run. The approval
    stays parked: a call again with the same `request_id` picks it up.

    `approval` is None when the timeout passed before the service answered the submit (its
    retries through an outage ran into the deadline): the action may have been parked all the
    same by an attempt whose answer was lost, which a call again with the same `request_id`
    finds rather than parking it twice."""

    approval: Approval | None
    kind: Literal["timed_out"] = "timed_out"

    @property
    def permitted(self) -> bool:
        return False

    @property
    def reason(self) -> str | None:
        return None


GuardOutcome = Union[Outcome, ActionChanged, TimedOut]
"""What the guard hands `on_refused` and `ApprovalRefused`: an outcome, or the guard's own refusal."""


def outcome_of(approval: Approval) -> Outcome:
    """The outcome of a decided approval (ValueError for a pending one)."""
    if approval.status is Status.ACCEPTED:
        return Approved(approval)
    if approval.status is Status.REJECTED:
        return Rejected(approval)
    if approval.status is Status.EXPIRED:
        return Expired(approval)
    raise ValueError(f"approval {approval.id} is still pending")
