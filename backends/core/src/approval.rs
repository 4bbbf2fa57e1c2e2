//! The approval record as the API shows it, and the decision a reviewer asks for.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{ApprovalId, TenantId, Timestamp};

/// Where an approval is in its life. Only `Pending` can change, and only once.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Accepted,
    Rejected,
    /// The TTL ran out while pending (or, on Temporal, its workflow was ended by hand): an
    /// automatic rejection.
    Expired,
}

impl Status {
    pub const ALL: [Status; 4] = [Self::Pending, Self::Accepted, Self::Rejected, Self::Expired];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An approval, exactly the contract's approval object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    #[schema(value_type = String)]
    pub id: ApprovalId,
    #[schema(value_type = String)]
    pub tenant: TenantId,
    pub status: Status,
    pub agent_id: String,
    pub submitted_by: String,
    /// What the agent wants to do; always an object with a string `type`.
    #[schema(value_type = Object)]
    pub action: Map<String, Value>,
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    pub reasons: Vec<String>,
    pub policy_version: String,
    #[schema(value_type = String, format = DateTime)]
    pub submitted_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// SHA-256 of the action's canonical JSON, fixed when it was parked: a decision applies to
    /// exactly this action (absent on records parked before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_digest: Option<String>,
}

impl Approval {
    /// The record as a reader at `now` must see it: a pending approval whose deadline has
    /// passed reads as expired even before the sweeper has recorded it, so nobody observes a
    /// decidable approval past its `expires_at`.
    pub fn as_of(mut self, now: Timestamp) -> Self {
        if self.status == Status::Pending && now >= self.expires_at {
            self.status = Status::Expired;
            self.decided_at = Some(self.expires_at);
            self.decision_reason = Some(EXPIRED_REASON.to_owned());
        }
        self
    }

    /// The record of an approval its engine ended undecided at `closed_at` (on Temporal: an
    /// operator terminated or cancelled its workflow, or the workflow failed): nothing can
    /// decide it any more, so from then on it reads as expired, the automatic rejection, with
    /// a reason saying why. It read as pending until its deadline, which no decision could
    /// meet (every one answered 500), and no list showed it.
    pub fn ended_undecided(self, closed_at: Timestamp) -> Self {
        let mut record = self.as_of(closed_at);
        if record.status == Status::Pending {
            record.status = Status::Expired;
            record.decided_at = Some(closed_at);
            record.decision_reason = Some(ENDED_REASON.to_owned());
        }
        record
    }

    /// Whether `other` asks for the same thing: the idempotency check for a repeated
    /// `request_id` (same action, context and agent).
    pub fn same_request(&self, other: &Approval) -> bool {
        self.asked_for(&other.action, &other.context, &other.agent_id)
    }

    /// Whether `other` is a copy of this very approval (the other engine's, or the other side
    /// of a migration): the same request, parked at the same moment. An id an agent used again
    /// after its first record left one engine names another approval there, which a replay of
    /// the first one's decision must not settle (it would tell that agent "accepted" for an
    /// action nobody reviewed).
    pub fn same_approval(&self, other: &Approval) -> bool {
        self.submitted_at == other.submitted_at && self.same_request(other)
    }

    /// Whether this record is of a request for `action`, with `context`, by `agent_id`.
    pub fn asked_for(
        &self,
        action: &Map<String, Value>,
        context: &Map<String, Value>,
        agent_id: &str,
    ) -> bool {
        self.action == *action && self.context == *context && self.agent_id == agent_id
    }

    /// Whether the stored action is still the one that was parked: `false` when the record
    /// carries a digest its action no longer matches (a changed record, never to be obeyed).
    pub fn action_intact(&self) -> bool {
        self.action_digest
            .as_deref()
            .is_none_or(|digest| digest == crate::action_digest(&self.action))
    }

    pub fn is_decided(&self) -> bool {
        self.status != Status::Pending
    }

    /// The reviewer's decision this record carries (accepted or rejected), as a request that
    /// replays it elsewhere with its original time: what a migration applies to a copy that
    /// was made while the approval was still pending. A record that does not say when (the
    /// ADR v1 service's: a decision flipped `status` only) was decided by now and before its
    /// deadline: replayed as of the earlier of the two. As of the deadline, it was refused
    /// (a decision must come before it), and the copy stayed pending.
    pub fn decision(&self) -> Option<DecisionRequest> {
        let verdict = match self.status {
            Status::Accepted => Verdict::Accept,
            Status::Rejected => Verdict::Reject,
            Status::Pending | Status::Expired => return None,
        };
        Some(DecisionRequest {
            verdict,
            decided_by: self.decided_by.clone().unwrap_or_default(),
            reason: self.decision_reason.clone(),
            at: self.decided_at.unwrap_or_else(|| {
                Timestamp::now().min(self.expires_at.minus(std::time::Duration::from_millis(1)))
            }),
        })
    }
}

/// The `decision_reason` of an approval that nobody decided in time.
pub const EXPIRED_REASON: &str = "expired: no reviewer decided before expires_at";

/// The `decision_reason` of an approval its engine ended before anyone decided it.
pub const ENDED_REASON: &str =
    "expired: its workflow was ended without a decision (terminated, cancelled or failed)";

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Reject,
}

impl Verdict {
    pub fn status(&self) -> Status {
        match self {
            Self::Accept => Status::Accepted,
            Self::Reject => Status::Rejected,
        }
    }
}

/// A reviewer's decision on one approval. `decided_by` is the caller's authenticated subject.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRequest {
    pub verdict: Verdict,
    pub decided_by: String,
    pub reason: Option<String>,
    pub at: Timestamp,
}

impl DecisionRequest {
    /// A decision made now by `decided_by`.
    pub fn now(verdict: Verdict, decided_by: impl Into<String>, reason: Option<String>) -> Self {
        Self {
            verdict,
            decided_by: decided_by.into(),
            reason,
            at: Timestamp::now(),
        }
    }
}
