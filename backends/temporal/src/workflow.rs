//! `ApprovalWorkflow`: one workflow execution per approval; `DecisionLogWorkflow`: one short
//! execution per decision-log event that parks nothing (see its documentation).
//!
//! Deterministic: it reads time only through `workflow_time()`, waits only through the SDK's
//! timer and `wait_condition`, and selects with the SDK's `select!`. Its state is the approval
//! record and the approval's audit events; both are copied into the workflow memo whenever they
//! change, so visibility (list, audit, scan, stats) and `DescribeWorkflowExecution` (get) read
//! them without a worker round trip. Everything it persists is a `record` type of this engine.
//! Its one side effect outside Temporal is the local activity that counts an expiry in the
//! worker's metrics (`expiry`), once per expired approval, behind the `count-expiry` patch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use approvals_core::{Approval, AuditEntry, Status, Timestamp, Verdict};
use serde::{Deserialize, Serialize};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    MemoValue, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

use crate::expiry::{count_expiry_options, ExpiryActivities, ExpiryInput, COUNT_EXPIRY_PATCH};
use crate::record::{first_event, ApprovalRecord, EventRecord};

/// Memo key holding the approval record as of the last workflow task.
pub const MEMO_APPROVAL: &str = "approval";
/// Memo key holding the approval's audit events, oldest first.
pub const MEMO_EVENTS: &str = "events";
/// Memo key holding a `DecisionLogWorkflow`'s one event.
pub const MEMO_EVENT: &str = "event";

/// How the approval came to exist: parked by the API, or carried over by `approvals migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Submitted,
    /// Imported at `at` (the importer's clock, fixed in the input so replay is deterministic).
    Imported {
        at: Timestamp,
    },
}

/// The workflow input: the record (with its absolute deadline `expires_at`) and its origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalInput {
    pub approval: ApprovalRecord,
    pub origin: Origin,
    /// The submitted event as the service built it (its decision log, with a shadow verdict);
    /// absent in histories written before it existed, which derive it from the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted: Option<AuditEntry>,
}

impl ApprovalInput {
    /// The audit events an approval starts with.
    pub fn initial_events(&self) -> Vec<EventRecord> {
        let approval = Approval::from(self.approval.clone());
        let entry = match self.origin {
            Origin::Submitted => self
                .submitted
                .clone()
                .unwrap_or_else(|| AuditEntry::submitted(&approval)),
            Origin::Imported { at } => AuditEntry::migrated(&approval, at),
        };
        vec![first_event(entry)]
    }
}

/// The argument of the `decide` update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecideInput {
    pub verdict: Verdict,
    pub decided_by: String,
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// What a `decide` update did, as a type: the client maps it one to one to
/// [`approvals_core::DecisionOutcome`], never by reading a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "approval", rename_all = "snake_case")]
pub enum DecideReply {
    Decided(ApprovalRecord),
    AlreadyDecided(ApprovalRecord),
    Expired(ApprovalRecord),
    SelfApproval,
}

pub(crate) fn to_timestamp(time: Option<SystemTime>) -> Option<Timestamp> {
    let since = time?.duration_since(UNIX_EPOCH).ok()?;
    Some(Timestamp::from_millis(
        i64::try_from(since.as_millis()).ok()?,
    ))
}

#[workflow]
pub struct ApprovalWorkflow {
    record: Approval,
    events: Vec<EventRecord>,
    /// The record changed since the memo was last written (the start wrote the input's).
    dirty: bool,
    /// When this execution moved the approval to `expired` (workflow time), if it did: what
    /// `run` reports to the worker once (`count_expiry`). Not state that history stores: replay
    /// sets it again at the same point.
    expired_at: Option<Timestamp>,
}

impl ApprovalWorkflow {
    /// Records the expiry once, at `now` (workflow time); a no-op unless still pending.
    fn expire(&mut self, now: Timestamp) {
        if self.record.status == Status::Pending {
            let expires_at = self.record.expires_at;
            self.record = self.record.clone().as_of(expires_at);
            let at = now.max(expires_at);
            let entry = AuditEntry::expired(&self.record, at);
            self.events.push(EventRecord::new(entry, 1));
            self.dirty = true;
            self.expired_at = Some(at);
        }
    }

    /// Appends the reviewer's decision event and marks the memo stale.
    fn decided(&mut self) {
        if let Some(entry) = AuditEntry::decided(&self.record) {
            self.events.push(EventRecord::new(entry, 1));
        }
        self.dirty = true;
    }

    fn reply(&self) -> ApprovalRecord {
        ApprovalRecord::from(&self.record)
    }
}

#[workflow_methods]
impl ApprovalWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: ApprovalInput) -> Self {
        let events = input.initial_events();
        Self {
            record: input.approval.into(),
            events,
            dirty: false,
            expired_at: None,
        }
    }

    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ApprovalRecord> {
        // An update delivered with the first workflow task runs before this: the approval may
        // already be settled here.
        if ctx.state(|s| s.record.status == Status::Pending) {
            let expires_at = ctx.state(|s| s.record.expires_at);
            let Some(now) = to_timestamp(ctx.workflow_time()) else {
                // Every activation carries the task's time; should one not, fail the workflow
                // task (it is retried) rather than guess a deadline.
                ctx.force_task_fail("workflow time unknown");
                ctx.wait_condition(|_: &Self| false).await?;
                unreachable!("a condition that is never true");
            };
            let remaining = u64::try_from(expires_at.as_millis() - now.as_millis()).unwrap_or(0);
            if remaining > 0 {
                temporalio_sdk::workflows::select! {
                    _ = ctx.wait_condition(|s: &Self| s.record.status != Status::Pending) => {}
                    _ = ctx.timer(Duration::from_millis(remaining)) => {
                        // A decision may have landed in the same workflow task as the timer:
                        // `expire` re-checks, so it is never overwritten.
                        let fired = to_timestamp(ctx.workflow_time()).unwrap_or(expires_at);
                        ctx.state_mut(|s| s.expire(fired));
                    }
                }
            } else {
                ctx.state_mut(|s| s.expire(now));
            }
        }
        // Wherever the expiry happened (the timer above, or a `decide` that arrived past the
        // deadline, even with the first task), it happened once, and `run` gets here once.
        if let Some(recorded_at) = ctx.state(|s| s.expired_at) {
            // Histories recorded before the count existed have no marker here: on replay
            // `patched` is false and they replay as they were recorded.
            if ctx.patched(COUNT_EXPIRY_PATCH) {
                let input = ExpiryInput {
                    approval: ctx.state(|s| s.reply()),
                    recorded_at,
                };
                // Best effort: a count that fails or times out never fails the workflow.
                let _ = ctx
                    .execute_local_activity(
                        ExpiryActivities::count_expiry,
                        input,
                        count_expiry_options(),
                    )
                    .await;
            }
        }
        // The memo changes only here, in the task that closes the workflow: audit reads walk
        // running executions only if started since their bound (`audit_query`), so an event
        // added to a running one's memo mid-run would be missed. Keep it so.
        if ctx.state(|s| s.dirty) {
            let (record, events) = ctx.state(|s| (s.reply(), s.events.clone()));
            ctx.upsert_memo([
                (MEMO_APPROVAL, Some(MemoValue::new(record))),
                (MEMO_EVENTS, Some(MemoValue::new(events))),
            ])?;
        }
        Ok(ctx.state(|s| s.reply()))
    }

    /// The record as the workflow holds it (pending past `expires_at` until the timer fires:
    /// readers apply `Approval::as_of`).
    #[query]
    pub fn status(&self, _ctx: &WorkflowContextView) -> ApprovalRecord {
        self.reply()
    }

    /// Refuses, without writing history, what cannot change the approval: a decision on a
    /// settled approval (the first decision won), one made at or past the deadline, and a
    /// self-approval. The client learns which from the record itself, not from this message.
    ///
    /// The deadline is judged by the decision's time as well as (in the handler) the workflow
    /// clock: readers judge it by the service's clock, so a service clock ahead of Temporal's
    /// read an approval as expired (an agent was told so) and a reviewer's accept then still
    /// landed. Validators do not run on replay, so this check changes no recorded history.
    #[update_validator(decide)]
    fn validate_decide(
        &self,
        _ctx: &WorkflowContextView,
        input: &DecideInput,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.record.status != Status::Pending {
            return Err(format!("already {}", self.record.status.as_str()).into());
        }
        if input.at >= self.record.expires_at {
            return Err("decided at or past the deadline".into());
        }
        if input.decided_by == self.record.submitted_by {
            return Err("self-approval".into());
        }
        Ok(())
    }

    /// The decision. Re-checks everything (validators do not run on replay, and the deadline
    /// needs the workflow clock, which validators do not see).
    #[update]
    pub fn decide(
        &mut self,
        ctx: &mut SyncWorkflowContext<Self>,
        input: DecideInput,
    ) -> DecideReply {
        if self.record.status == Status::Pending {
            if let Some(now) = to_timestamp(ctx.workflow_time()) {
                if now >= self.record.expires_at {
                    self.expire(now);
                }
            }
        }
        match self.record.status {
            Status::Expired => DecideReply::Expired(self.reply()),
            Status::Accepted | Status::Rejected => DecideReply::AlreadyDecided(self.reply()),
            Status::Pending if input.decided_by == self.record.submitted_by => {
                DecideReply::SelfApproval
            }
            Status::Pending => {
                self.record.status = input.verdict.status();
                self.record.decided_at = Some(input.at);
                self.record.decided_by = Some(input.decided_by);
                self.record.decision_reason = input.reason;
                self.decided();
                DecideReply::Decided(self.reply())
            }
        }
    }
}

/// One decision-log event that belongs to no parked approval (an `allow` or `deny`, a policy
/// change), kept as an execution of its own: its memo `event` (an [`EventRecord`], set by the
/// client at start, so visibility shows it without a worker) and its input hold the event, its
/// `TenantId` search attribute makes `audit` find it. The workflow does nothing and completes in
/// its first task; the execution is the record. Listing, stats, scan and migration query
/// `ApprovalWorkflow` only and never see it.
#[workflow]
#[derive(Default)]
pub struct DecisionLogWorkflow;

#[workflow_methods]
impl DecisionLogWorkflow {
    #[run]
    pub async fn run(_ctx: &mut WorkflowContext<Self>, _event: EventRecord) -> WorkflowResult<()> {
        Ok(())
    }
}
