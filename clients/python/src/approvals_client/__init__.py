"""Python client of the approvals service: policy-gated actions for AI agents.

    from approvals_client import ApprovalsClient, require_approval

    client = ApprovalsClient.from_env()   # APV_URL, APV_TOKEN, APV_TENANT
    outcome = client.submit_and_wait({"type": "document_read", "resource": "finance/q3"})
    if outcome.permitted: ...
"""

from ._core import NO_RETRY, RetryPolicy, new_request_id
from .aio import AsyncApprovalsClient
from .client import ApprovalsClient
from .errors import ApiError, ApprovalRefused, ApprovalsError, ProtocolError, TransportError, WaitTimeout, describe_refusal
from .guard import require_approval
from .models import (
    ActionChanged,
    Allowed,
    Approval,
    ApprovalPage,
    Approved,
    AuditEvent,
    AuditKind,
    Decision,
    Denied,
    Expired,
    GuardOutcome,
    LiveEvent,
    Outcome,
    Problem,
    Rejected,
    Status,
    SubmitResponse,
    TimedOut,
    outcome_of,
)

__all__ = [
    "NO_RETRY",
    "ActionChanged",
    "Allowed",
    "ApiError",
    "Approval",
    "ApprovalPage",
    "ApprovalRefused",
    "ApprovalsClient",
    "ApprovalsError",
    "Approved",
    "AsyncApprovalsClient",
    "AuditEvent",
    "AuditKind",
    "Decision",
    "Denied",
    "Expired",
    "GuardOutcome",
    "LiveEvent",
    "Outcome",
    "Problem",
    "Rejected",
    "RetryPolicy",
    "Status",
    "SubmitResponse",
    "TimedOut",
    "TransportError",
    "ProtocolError",
    "WaitTimeout",
    "describe_refusal",
    "new_request_id",
    "outcome_of",
    "require_approval",
]
__version__ = "0.1.0"
