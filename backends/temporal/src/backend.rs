//! `TemporalBackend`: the request path of the Temporal engine, as a Temporal client.
//!
//! Reads of one approval use `DescribeWorkflowExecution` (the memo holds the record: no worker
//! round trip). Decisions are the workflow's `decide` Update. Listing, audit and stats use the
//! visibility API filtered by the `TenantId` search attribute (stats in `stats`, the whole-record
//! walk in `transfer`). Decision-log events that park nothing are `DecisionLogWorkflow`
//! executions, which only `audit` reads. Every call runs under a deadline
//! (`tokio::time::timeout`).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, AuditEntry, AuditEvent, BackendError, DecisionOutcome,
    DecisionRequest, EngineEvents, EngineStatus, Listing, Page, PendingStats, Status, Stop,
    SubmitOutcome, TenantId, Timestamp, WaitingCount,
};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use temporalio_client::errors::{WorkflowGetResultError, WorkflowStartError, WorkflowUpdateError};
use temporalio_client::grpc::{OperatorService, WorkflowService};
use temporalio_client::tonic::IntoRequest;
use temporalio_client::{
    Client, WorkflowDescribeOptions, WorkflowExecuteUpdateOptions, WorkflowExecution,
    WorkflowExecutionStatus, WorkflowGetResultOptions, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowListOptions, WorkflowStartOptions,
};
use temporalio_common::protos::temporal::api::common::v1::Payload;
use temporalio_common::protos::temporal::api::operatorservice::v1::ListSearchAttributesRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributes};
use temporalio_common::MemoValues;

use crate::client;
use crate::cursor;
use crate::recent::{Recent, Row};
use crate::record::{logged_event, ApprovalRecord, EventRecord};
use crate::settings::TemporalSettings;
use crate::workflow::{
    to_timestamp, ApprovalInput, ApprovalWorkflow, DecideInput, DecideReply, DecisionLogWorkflow,
    Origin, MEMO_APPROVAL, MEMO_EVENT, MEMO_EVENTS,
};

/// How late visibility may show an event behind later ones, beyond the call that wrote it: its
/// indexing lag (about a second on a loaded cluster), with a wide margin.
const AUDIT_SETTLE_TIME: Duration = Duration::from_secs(15);

/// Below this, an update is not sent: it could not be answered in time.
const MIN_UPDATE_TIME: Duration = Duration::from_millis(500);

/// The longest a wait's reads may take past (or, the first, within) the wait itself: the
/// answer then comes at most this late.
const FINAL_READ: Duration = Duration::from_secs(5);

/// How much the service instances' clocks (events) and the server's (executions' close) may
/// disagree for an audit read's bound (see `audit_query`).
const AUDIT_CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// The search attribute every approval workflow carries; register it on the namespace
/// (`temporal operator search-attribute create --name TenantId --type Keyword`, or
/// `--search-attribute TenantId=Keyword` on a dev server).
pub const TENANT_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword(TENANT_ATTRIBUTE);

/// The workflow type name, as visibility queries see it.
pub(crate) const WORKFLOW_TYPE: &str = "ApprovalWorkflow";

/// The decision log's workflow type name (`record`), as visibility queries see it.
pub(crate) const DECISION_LOG_TYPE: &str = "DecisionLogWorkflow";

/// The workflow id of an approval: the Redis key, so the mapping is obvious.
pub fn workflow_id(tenant: &TenantId, id: &ApprovalId) -> String {
    format!("approval:{tenant}:{id}")
}

/// The workflow id of a decision-log event: unique as its event id is (see
/// `record::logged_event`), and apart from every approval's (`approval:` prefix).
fn decision_log_id(tenant: &TenantId, event_id: &str) -> String {
    format!("decision-log:{tenant}:{event_id}")
}

/// A random nonce for a decision-log event id: 12 hex digits of a v4 UUID.
fn nonce() -> String {
    let mut text = ApprovalId::generate().to_string();
    text.truncate(12);
    text
}

pub struct TemporalBackend {
    pub(crate) client: Client,
    pub(crate) settings: TemporalSettings,
    pub(crate) recent: Recent,
    /// Hears of memos passed over as unreadable (the service counts them).
    events: OnceLock<Arc<dyn EngineEvents>>,
    /// Long-polls past their first read (`EngineStatus::waiting`).
    parked: WaitingCount,
    /// Whether the namespace was seen with the `TenantId` search attribute: until then each
    /// readiness probe looks for it (without it every start, so every submit, is refused).
    tenant_attribute_seen: std::sync::atomic::AtomicBool,
}

/// `approval` as its execution's status tells: a workflow closed other than by completing (a
/// decision or the expiry completes it) ended it undecided. A paused one may yet run again.
pub(crate) fn as_closed(
    approval: Approval,
    status: WorkflowExecutionStatus,
    closed_at: Option<Timestamp>,
) -> Approval {
    match status {
        WorkflowExecutionStatus::Terminated
        | WorkflowExecutionStatus::Canceled
        | WorkflowExecutionStatus::Failed
        | WorkflowExecutionStatus::TimedOut => {
            approval.ended_undecided(closed_at.unwrap_or_else(Timestamp::now))
        }
        _ => approval,
    }
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// Decodes a memo field written by the default (JSON) payload converter.
pub(crate) fn memo_field<T: serde::de::DeserializeOwned>(
    key: &str,
    fields: &std::collections::HashMap<String, Payload>,
    name: &str,
) -> Result<T, BackendError> {
    let payload = fields
        .get(name)
        .ok_or_else(|| corrupt(key, format!("memo has no `{name}`")))?;
    // Visibility returns memo payloads as stored: a payload codec on this namespace would make
    // them unreadable here (the typed `describe` path decodes through the client's converter).
    if payload.metadata.get("encoding").map(Vec::as_slice) != Some(b"json/plain".as_slice()) {
        return Err(corrupt(key, format!("memo `{name}` is not json/plain")));
    }
    serde_json::from_slice(&payload.data).map_err(|e| corrupt(key, format!("memo `{name}`: {e}")))
}

impl TemporalBackend {
    /// Connects to the frontend (under the call deadline). The client is cheap to clone and
    /// bound to the tokio runtime this runs on.
    pub async fn connect(settings: TemporalSettings) -> Result<Self, BackendError> {
        let client = client::connect(&settings)
            .await
            .map_err(|e| BackendError::unavailable("connect", e))?;
        Ok(Self {
            client,
            recent: Recent::new(settings.read_your_writes),
            settings,
            events: OnceLock::new(),
            parked: WaitingCount::default(),
            tenant_attribute_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Reports every memo a read passes over as unreadable to `events` from now on.
    pub fn report_unreadable_to(&self, events: Arc<dyn EngineEvents>) {
        let _ = self.events.set(events);
    }

    /// One execution whose memo cannot be read (written by hand, or by a newer version) is
    /// logged, counted and passed over: failing the read would take every listing, audit
    /// page and pending figure of its tenant (or of all tenants) down with it. Other errors
    /// stay errors.
    fn pass_over<T>(&self, read: Result<T, BackendError>) -> Result<Option<T>, BackendError> {
        match read {
            Ok(value) => Ok(Some(value)),
            Err(BackendError::Corrupt { key, reason }) => {
                tracing::warn!(key, reason, "unreadable workflow memo passed over");
                if let Some(events) = self.events.get() {
                    events.unreadable(&key, &reason);
                }
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    pub fn settings(&self) -> &TemporalSettings {
        &self.settings
    }

    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| BackendError::Timeout(op))?
    }

    fn start_options(&self, approval: &Approval, input: &ApprovalInput) -> WorkflowStartOptions {
        let mut memo = MemoValues::new();
        memo.insert(MEMO_APPROVAL, input.approval.clone());
        memo.insert(MEMO_EVENTS, input.initial_events());
        WorkflowStartOptions::new(
            self.settings.task_queue.clone(),
            workflow_id(&approval.tenant, &approval.id),
        )
        // A running or closed execution with this id is a duplicate: never a second run, and
        // never a new run after the first one closed (until the namespace retention drops it).
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .search_attributes(SearchAttributes::new([
            TENANT_ID.value_set(approval.tenant.to_string())
        ]))
        .memo(memo)
        .build()
    }

    /// Starts the workflow for `approval` within `budget`; `Ok(false)` when the id exists
    /// (running or closed).
    pub(crate) async fn start(
        &self,
        approval: &Approval,
        origin: Origin,
        submitted: Option<AuditEntry>,
        budget: Duration,
    ) -> Result<bool, BackendError> {
        let input = ApprovalInput {
            approval: ApprovalRecord::from(approval),
            origin,
            submitted,
        };
        let options = self.start_options(approval, &input);
        let row = Row {
            approval: approval.clone(),
            events: input
                .initial_events()
                .into_iter()
                .map(AuditEvent::from)
                .collect(),
        };
        let started = self
            .call("start", budget, async {
                match self
                    .client
                    .start_workflow(ApprovalWorkflow::run, input, options)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(false),
                    Err(e) => Err(BackendError::unavailable("start", e)),
                }
            })
            .await?;
        if started {
            self.recent.remember(row);
        }
        Ok(started)
    }

    /// Remembers a settled record this process learned of (read-your-writes for listings).
    fn learned(&self, outcome: &DecisionOutcome) {
        if let DecisionOutcome::Decided(a)
        | DecisionOutcome::AlreadyDecided(a)
        | DecisionOutcome::Expired(a) = outcome
        {
            self.recent.remember(Row {
                approval: a.clone(),
                events: Vec::new(),
            });
        }
    }

    /// The record as the workflow last wrote it into its memo (not yet `as_of` now).
    async fn read(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        self.read_within(tenant, id, self.settings.call_timeout)
            .await
    }

    /// [`Self::read`] within `budget`: what is left of a call that already spent some.
    async fn read_within(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        budget: Duration,
    ) -> Result<Option<Approval>, BackendError> {
        Ok(self
            .read_execution_within(tenant, id, budget)
            .await?
            .map(|(approval, _running)| approval))
    }

    /// [`Self::read_within`], and whether the approval's workflow still runs.
    async fn read_execution_within(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        budget: Duration,
    ) -> Result<Option<(Approval, bool)>, BackendError> {
        let key = workflow_id(tenant, id);
        let handle = self
            .client
            .get_workflow_handle::<ApprovalWorkflow>(key.clone());
        self.call("describe", budget, async {
            match handle.describe(WorkflowDescribeOptions::default()).await {
                Ok(description) => {
                    let running = description.status() == WorkflowExecutionStatus::Running;
                    let memo = description.memo();
                    match memo.get::<ApprovalRecord>(MEMO_APPROVAL) {
                        Ok(Some(record)) => Ok(Some((
                            as_closed(
                                record.into(),
                                description.status(),
                                to_timestamp(description.close_time()),
                            ),
                            running,
                        ))),
                        Ok(None) => Err(corrupt(&key, "memo has no approval")),
                        Err(e) => Err(corrupt(&key, e)),
                    }
                }
                Err(temporalio_client::errors::WorkflowInteractionError::NotFound(status))
                    if !namespace_missing(&status) =>
                {
                    Ok(None)
                }
                Err(e) => Err(BackendError::unavailable("describe", e)),
            }
        })
        .await
    }

    /// Every execution a visibility query matches, walked to the end under `scan_timeout`.
    /// Visibility (SQL) has no ORDER BY: callers sort.
    async fn executions(
        &self,
        op: &'static str,
        query: String,
    ) -> Result<Vec<WorkflowExecution>, BackendError> {
        self.call(op, self.settings.scan_timeout, async {
            self.client
                .list_workflows(query, WorkflowListOptions::default())
                .map_err(|e| BackendError::unavailable(op, e))
                .try_collect::<Vec<_>>()
                .await
        })
        .await
    }

    /// An `ApprovalWorkflow` execution's memo: its record and events.
    fn approval_row(execution: &WorkflowExecution) -> Result<Row, BackendError> {
        let key = execution.id();
        let empty = Default::default();
        let fields = execution.raw().memo.as_ref().map_or(&empty, |m| &m.fields);
        let approval: ApprovalRecord = memo_field(key, fields, MEMO_APPROVAL)?;
        let events: Vec<EventRecord> = memo_field(key, fields, MEMO_EVENTS)?;
        Ok(Row {
            approval: as_closed(
                approval.into(),
                execution.status(),
                to_timestamp(execution.close_time()),
            ),
            events: events.into_iter().map(AuditEvent::from).collect(),
        })
    }

    /// Visibility's rows with this process's recent writes merged in (those of the tenants
    /// `wanted` selects), as of `now`.
    pub(crate) fn overlaid(
        &self,
        rows: Vec<Row>,
        wanted: impl Fn(&TenantId) -> bool,
        now: Timestamp,
    ) -> Vec<Row> {
        self.recent
            .overlay(rows, wanted)
            .into_iter()
            .map(|row| row.seen_at(now))
            .collect()
    }

    /// Every approval a visibility query matches (it must select `ApprovalWorkflow`s only),
    /// with its memo decoded, this process's recent writes merged in (those of the tenants
    /// `wanted` selects), as of `now`. Visibility (SQL) has no ORDER BY: callers sort.
    pub(crate) async fn visible(
        &self,
        op: &'static str,
        query: String,
        wanted: impl Fn(&TenantId) -> bool,
        now: Timestamp,
    ) -> Result<Vec<Row>, BackendError> {
        let rows = self.visible_as_stored(op, query).await?;
        Ok(self.overlaid(rows, wanted, now))
    }

    /// [`Self::visible`]'s rows as visibility holds them: no recent writes, no `as_of`.
    pub(crate) async fn visible_as_stored(
        &self,
        op: &'static str,
        query: String,
    ) -> Result<Vec<Row>, BackendError> {
        let mut rows = Vec::new();
        for execution in self.executions(op, query).await? {
            rows.extend(self.pass_over(Self::approval_row(&execution))?);
        }
        Ok(Row::united(rows))
    }

    fn tenant_query(tenant: &TenantId) -> String {
        // Tenant ids match `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`: nothing to escape.
        format!("WorkflowType = '{WORKFLOW_TYPE}' AND TenantId = '{tenant}'")
    }

    /// The tenant's approvals and its decision-log executions: what `audit` reads.
    /// The executions whose events an audit read from `from` on needs: those closed since (an
    /// execution's events all come before its close) and those still running that started
    /// since (a running one holds only the events of its start: a decision or an expiry
    /// closes it). The margin is for clocks: events carry the service instance's, the start
    /// and close the server's. Without a bound every page of a read walked the tenant's whole
    /// history, and the webhook reader reads a few pages a second; with every running one,
    /// a long-TTL backlog, or the decision logs that pile up running while no worker polls,
    /// were walked on every page until the workers caught up.
    fn audit_query(tenant: &TenantId, from: Option<Timestamp>) -> String {
        let types = format!(
            "(WorkflowType = '{WORKFLOW_TYPE}' OR WorkflowType = '{DECISION_LOG_TYPE}') \
             AND TenantId = '{tenant}'"
        );
        // Visibility parses years 0000 to 9999 only, and refused anything else (a forged
        // cursor of year 33658, a `since` in the first minutes of year 0) as an outage: a bound
        // before them is no bound, one after them the last instant they have.
        const FIRST_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
        const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let bound = from
            .map(|from| from.minus(AUDIT_CLOCK_MARGIN).as_millis())
            .filter(|ms| *ms >= FIRST_MS);
        match bound {
            None => types,
            Some(ms) => {
                let bound = Timestamp::from_millis(ms.min(LAST_MS));
                format!(
                    "{types} AND ((ExecutionStatus = 'Running' AND StartTime >= '{bound}') \
                     OR CloseTime >= '{bound}')"
                )
            }
        }
    }

    /// Starts the `DecisionLogWorkflow` execution that keeps `event`; `Ok(false)` when its id
    /// is taken (a nonce collision: the caller draws another).
    async fn start_logged(&self, event: &EventRecord) -> Result<bool, BackendError> {
        let tenant = &event.entry.tenant;
        let mut memo = MemoValues::new();
        memo.insert(MEMO_EVENT, event.clone());
        let options = WorkflowStartOptions::new(
            self.settings.decision_log_task_queue(),
            decision_log_id(tenant, &event.event_id),
        )
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .search_attributes(SearchAttributes::new([
            TENANT_ID.value_set(tenant.to_string())
        ]))
        .memo(memo)
        .build();
        self.call("record", self.settings.call_timeout, async {
            match self
                .client
                .start_workflow(DecisionLogWorkflow::run, event.clone(), options)
                .await
            {
                Ok(_) => Ok(true),
                Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(false),
                Err(e) => Err(BackendError::unavailable("record", e)),
            }
        })
        .await
    }

    /// The `decide` update, and what its refusal or failure meant.
    async fn decide_once(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError> {
        let handle = self
            .client
            .get_workflow_handle::<ApprovalWorkflow>(workflow_id(tenant, id));
        let input = DecideInput {
            verdict: decision.verdict,
            decided_by: decision.decided_by.clone(),
            reason: decision.reason.clone(),
            at: decision.at,
        };
        // One id for every attempt: an attempt the server admitted before its call failed is
        // then answered to the next attempt as what it was (this decision, Decided), rather than
        // a second update refused as AlreadyDecided, which told the winning reviewer 409 and
        // kept dual from mirroring the decision.
        let update_id = uuid::Uuid::new_v4().to_string();
        // One `call_timeout` for the whole decision, its attempts and the reads that tell what
        // they did: a fresh deadline for each step added up past `server.request_timeout` (a
        // timed-out update, then a hung read: 2 × 15 s), and the reviewer got 408 for an
        // outage, not 503. An update leaves a fifth of it for the read that follows a timeout.
        let until = tokio::time::Instant::now() + self.settings.call_timeout;
        let left = || until.saturating_duration_since(tokio::time::Instant::now());
        let for_the_read = self.settings.read_reserve();
        let mut last_error = None;
        // Whether an earlier attempt may have landed (its call failed, not the update).
        let mut maybe_landed = false;
        for attempt in 0..3 {
            // Too little left for another update to be answered: what the last attempt said.
            // The first is always sent, however short the deadline.
            if attempt > 0 && left().saturating_sub(for_the_read) < MIN_UPDATE_TIME {
                break;
            }
            let update = handle.execute_update(
                ApprovalWorkflow::decide,
                input.clone(),
                WorkflowExecuteUpdateOptions::builder()
                    .update_id(update_id.clone())
                    .build(),
            );
            let reply = match self
                .call("decide", left().saturating_sub(for_the_read), async {
                    Ok(update.await)
                })
                .await
            {
                Ok(reply) => reply,
                // The server may have applied it after all (a slow worker): what the record
                // says now answers, this decision's win included. Still pending: it may yet
                // land, and the caller is told the engine did not answer in time.
                Err(timeout @ BackendError::Timeout(_)) => {
                    let record = self.read_within(tenant, id, left()).await?;
                    return Self::settled_outcome(record, &decision, true).ok_or(timeout);
                }
                Err(e) => return Err(e),
            };
            match reply {
                Ok(DecideReply::Decided(a)) => return Ok(DecisionOutcome::Decided(a.into())),
                Ok(DecideReply::AlreadyDecided(a)) => {
                    return Ok(DecisionOutcome::AlreadyDecided(a.into()))
                }
                Ok(DecideReply::Expired(a)) => return Ok(DecisionOutcome::Expired(a.into())),
                Ok(DecideReply::SelfApproval) => return Ok(DecisionOutcome::SelfApproval),
                // Refused by the validator, sent to a closed (or unknown) execution, or lost
                // with a failed workflow task: the record says which, since a settled record
                // never changes again and self-approval is a property of the record.
                Err(
                    e @ (WorkflowUpdateError::Failed(_)
                    | WorkflowUpdateError::NotFound(_)
                    | WorkflowUpdateError::Rpc(_)),
                ) => {
                    let failed_call = matches!(e, WorkflowUpdateError::Rpc(_));
                    let found = self.read_execution_within(tenant, id, left()).await?;
                    let closed = found.as_ref().is_some_and(|(_, running)| !running);
                    let record = found.map(|(approval, _)| approval);
                    let ours = maybe_landed || failed_call;
                    maybe_landed = ours;
                    if let Some(outcome) = Self::settled_outcome(record, &decision, ours) {
                        return Ok(outcome);
                    }
                    // Pending, and its workflow not running though not ended (an operator
                    // paused it; one ended undecided reads as expired): no update lands until
                    // it runs again. An outage, said at once rather than after every retry.
                    if closed {
                        return Err(BackendError::unavailable(
                            "decide",
                            "its workflow is not running (paused?): the decision cannot land",
                        ));
                    }
                    // Still pending and not a self-approval: the update did not land; retry.
                    last_error = Some(e);
                }
                Err(e) => return Err(BackendError::unavailable("decide", e)),
            }
        }
        Err(match last_error {
            Some(e) => BackendError::unavailable("decide", e),
            None => BackendError::unavailable("decide", "the decision did not land"),
        })
    }

    /// What the server says of `temporal.namespace`: whether it exists, and how long it keeps
    /// a closed execution (and so a settled approval and its events).
    pub async fn describe_namespace(&self) -> Result<Namespace, BackendError> {
        let request = DescribeNamespaceRequest {
            namespace: self.settings.namespace.clone(),
            ..Default::default()
        };
        let mut client = self.client.clone();
        self.call(
            "describe_namespace",
            self.settings.call_timeout,
            async move {
                let described =
                    match WorkflowService::describe_namespace(&mut client, request.into_request())
                        .await
                    {
                        Ok(described) => described.into_inner(),
                        Err(status) if namespace_missing(&status) => return Ok(Namespace::Missing),
                        Err(e) => return Err(BackendError::unavailable("describe_namespace", e)),
                    };
                Ok(Namespace::Exists {
                    retention: described
                        .config
                        .and_then(|c| c.workflow_execution_retention_ttl)
                        .and_then(|ttl| u64::try_from(ttl.seconds).ok())
                        .map(Duration::from_secs),
                })
            },
        )
        .await
    }

    /// Maps what the record says now to the outcome a refused or failed update had. When an
    /// attempt's call failed (`maybe_ours`: the server may have applied it), a record settled
    /// by this very decision (its verdict, reviewer and time) is this decision's win: it must
    /// not tell its reviewer 409. Otherwise a refusal is a refusal, even of the same reviewer's
    /// twin request in the same millisecond.
    fn settled_outcome(
        record: Option<Approval>,
        decision: &DecisionRequest,
        maybe_ours: bool,
    ) -> Option<DecisionOutcome> {
        let Some(record) = record else {
            return Some(DecisionOutcome::NotFound);
        };
        // The decision's own time counts too: the workflow refuses one made at or past the
        // deadline, which this clock may not have reached if it lags the caller's.
        let record = record.as_of(Timestamp::now().max(decision.at));
        let ours = maybe_ours
            && record.status == decision.verdict.status()
            && record.decided_by.as_deref() == Some(decision.decided_by.as_str())
            && record.decided_at.map(|at| at.as_millis()) == Some(decision.at.as_millis());
        match record.status {
            Status::Expired => Some(DecisionOutcome::Expired(record)),
            Status::Accepted | Status::Rejected if ours => Some(DecisionOutcome::Decided(record)),
            Status::Accepted | Status::Rejected => Some(DecisionOutcome::AlreadyDecided(record)),
            Status::Pending if record.submitted_by == decision.decided_by => {
                Some(DecisionOutcome::SelfApproval)
            }
            Status::Pending => None,
        }
    }
}

#[async_trait]
impl ApprovalBackend for TemporalBackend {
    fn kind(&self) -> &'static str {
        "temporal"
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            waiting: Some(self.parked.get()),
            ..EngineStatus::default()
        }
    }

    /// The audit comes from visibility, which shows what other instances and the workers
    /// wrote a moment late, while this instance's own writes show at once (`recent`).
    fn audit_settle_time(&self) -> Duration {
        // An event is stamped before the call that writes it (a decision's time, then its
        // update), and that call may take its whole `call_timeout` (a worker that died: the
        // sticky queue's 10 s): a fixed 15 s let such an event become visible behind every
        // reader's window, and live streams and webhooks never saw it.
        AUDIT_SETTLE_TIME + self.settings.call_timeout
    }

    fn check_cursor(&self, listing: Listing, cursor: &str) -> Result<(), BackendError> {
        match listing {
            Listing::Approvals => crate::cursor::decode_list(cursor).map(drop),
            Listing::Audit => crate::cursor::decode_audit(cursor).map(drop),
        }
    }

    async fn park(
        &self,
        approval: Approval,
        submitted: AuditEntry,
    ) -> Result<SubmitOutcome, BackendError> {
        // One `call_timeout` for the start and the read of a repeated request's record, as for
        // a decision: a deadline each added up to `server.request_timeout` (408, not 503). The
        // start may take four fifths of it; the read has what is left, at least a fifth.
        let until = tokio::time::Instant::now() + self.settings.call_timeout;
        if self
            .start(
                &approval,
                Origin::Submitted,
                Some(submitted),
                self.settings.write_deadline(),
            )
            .await?
        {
            return Ok(SubmitOutcome::Created(approval));
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match self
            .read_within(&approval.tenant, &approval.id, left)
            .await?
        {
            Some(existing) => Ok(SubmitOutcome::Existing(existing.as_of(Timestamp::now()))),
            // Closed and dropped by retention between the two calls.
            None => Err(BackendError::unavailable(
                "submit",
                "the approval vanished while being read; retry",
            )),
        }
    }

    /// One `DecisionLogWorkflow` execution per event (see its documentation and DESIGN.md):
    /// one `StartWorkflowExecution` call; the worker later completes it in one workflow task,
    /// off the request path. The event is in the start request (input and memo), so it is
    /// durable once the call returns and visible to `audit` without a worker. Remembered for
    /// this process's reads until visibility shows it.
    async fn record(&self, entry: AuditEntry) -> Result<(), BackendError> {
        // A taken id can only be a nonce collision (48 random bits, same tenant, request id
        // and millisecond): draw again.
        for _ in 0..3 {
            let event = logged_event(entry.clone(), &nonce());
            if self.start_logged(&event).await? {
                self.recent.remember_logged(event.into());
                return Ok(());
            }
        }
        Err(BackendError::unavailable(
            "record",
            "no free decision-log id after three draws",
        ))
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        Ok(self
            .read(tenant, id)
            .await?
            .map(|a| a.as_of(Timestamp::now())))
    }

    async fn decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError> {
        let outcome = self.decide_once(tenant, id, decision).await?;
        self.learned(&outcome);
        Ok(outcome)
    }

    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
        stop: Stop,
    ) -> Result<Option<Approval>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Both reads within the wait's own time (plus one final read's), not a `call_timeout`
        // each on top of it: clients size their read timeouts by the 60 s a wait may last.
        let Some(current) = self
            .read_within(
                tenant,
                id,
                self.settings.call_timeout.min(timeout.max(FINAL_READ)),
            )
            .await?
            .map(|a| a.as_of(Timestamp::now()))
        else {
            return Ok(None);
        };
        if current.is_decided() {
            return Ok(Some(current));
        }
        let _parked = self.parked.enter();
        // Await the workflow's close event (a long poll on its history), until the caller's
        // deadline or the approval's own, whichever is first. Past `expires_at` a read reports
        // the expiry even if the timer has not been processed yet.
        let until_expiry =
            u64::try_from(current.expires_at.as_millis() - Timestamp::now().as_millis())
                .unwrap_or(0);
        let wake =
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(until_expiry + 10));
        let handle = self
            .client
            .get_workflow_handle::<ApprovalWorkflow>(workflow_id(tenant, id));
        let closed =
            tokio::time::timeout_at(wake, handle.get_result(WorkflowGetResultOptions::default()));
        let mut stop = stop;
        let closed = tokio::select! {
            closed = closed => closed,
            // Shutting down: the record as read, at once.
            () = &mut stop => return Ok(Some(current.as_of(Timestamp::now()))),
        };
        match closed {
            Ok(Ok(record)) => {
                let record = Approval::from(record).as_of(Timestamp::now());
                self.learned(&DecisionOutcome::AlreadyDecided(record.clone()));
                return Ok(Some(record));
            }
            // Closed and dropped by retention meanwhile: the read below says so.
            Ok(Err(WorkflowGetResultError::NotFound(status))) if !namespace_missing(&status) => {}
            // Closed without a decision (an operator terminated or cancelled it; it failed or
            // timed out): nothing will ever decide it, and the read below says expired.
            Ok(Err(
                WorkflowGetResultError::Terminated { .. }
                | WorkflowGetResultError::Cancelled { .. }
                | WorkflowGetResultError::Failed(_)
                | WorkflowGetResultError::TimedOut,
            )) => {}
            Ok(Err(e)) => return Err(BackendError::unavailable("wait", e)),
            Err(_elapsed) => {}
        }
        Ok(self
            .read_within(tenant, id, self.settings.call_timeout.min(FINAL_READ))
            .await?
            .map(|a| a.as_of(Timestamp::now())))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Approval>, BackendError> {
        let after = cursor.map(cursor::decode_list).transpose()?;
        // A pending approval's workflow is always running. A settled one may still be running
        // (an imported settled record before its first workflow task, an expiry before the
        // timer is processed): for those the memo decides, not the execution status.
        let filter = match status {
            Status::Pending => " AND ExecutionStatus = 'Running'",
            _ => "",
        };
        let query = format!("{}{filter}", Self::tenant_query(tenant));
        let now = Timestamp::now();
        let mut items: Vec<Approval> = self
            .visible("list", query, |t| t == tenant, now)
            .await?
            .into_iter()
            .map(|row| row.approval)
            .filter(|a| a.status == status && &a.tenant == tenant)
            .filter(|a| match &after {
                Some((ms, id)) => (a.submitted_at.as_millis(), &a.id) > (*ms, id),
                None => true,
            })
            .collect();
        items.sort_by(|a, b| (a.submitted_at, &a.id).cmp(&(b.submitted_at, &b.id)));
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more {
            items
                .last()
                .map(|a| cursor::encode_list(a.submitted_at.as_millis(), &a.id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, BackendError> {
        let after = cursor.map(cursor::decode_audit).transpose()?;
        let after = after.as_deref();
        let now = Timestamp::now();
        // An event id starts with its time in milliseconds (15 digits, checked by the decode).
        let after_time = after
            .and_then(|c| c.get(..15))
            .and_then(|millis| millis.parse::<i64>().ok())
            .map(Timestamp::from_millis);
        let from = since.into_iter().chain(after_time).max();
        // One visibility walk over both workflow types: the approvals (their events in their
        // memos) and the decision-log events that parked nothing (one per execution).
        let (mut rows, mut logged) = (Vec::new(), Vec::new());
        for execution in self
            .executions("audit", Self::audit_query(tenant, from))
            .await?
        {
            if execution.workflow_type() == DECISION_LOG_TYPE {
                let key = execution.id();
                let empty = Default::default();
                let fields = execution.raw().memo.as_ref().map_or(&empty, |m| &m.fields);
                let event = self.pass_over(memo_field::<EventRecord>(key, fields, MEMO_EVENT))?;
                logged.extend(event.map(AuditEvent::from));
            } else {
                rows.extend(self.pass_over(Self::approval_row(&execution))?);
            }
        }
        let events = self
            .overlaid(Row::united(rows), |t| t == tenant, now)
            .into_iter()
            .flat_map(|row| row.events)
            .chain(self.recent.overlay_logged(tenant, logged));
        let mut events: Vec<AuditEvent> = events
            .filter(|e| &e.tenant == tenant)
            .filter(|e| since.is_none_or(|s| e.timestamp >= s))
            .filter(|e| after.is_none_or(|c| e.event_id.as_str() > c))
            .collect();
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        // A decision-log execution returned twice by the walk (see `Row::united`).
        events.dedup_by(|a, b| a.event_id == b.event_id);
        let more = events.len() > limit;
        events.truncate(limit);
        let next_cursor = if more {
            events.last().map(|e| e.event_id.clone())
        } else {
            None
        };
        Ok(Page {
            items: events,
            next_cursor,
        })
    }

    async fn pending_stats(
        &self,
        bounds: &[Duration],
        now: Timestamp,
    ) -> Result<PendingStats, BackendError> {
        crate::stats::pending_stats(self, bounds, now).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let request = DescribeNamespaceRequest {
            namespace: self.settings.namespace.clone(),
            ..Default::default()
        };
        let mut client = self.client.clone();
        self.call("ping", self.settings.call_timeout, async move {
            WorkflowService::describe_namespace(&mut client, request.into_request())
                .await
                .map(drop)
                .map_err(|e| BackendError::unavailable("ping", e))
        })
        .await?;
        match self.has_tenant_attribute().await {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => Err(BackendError::unavailable(
                "ping",
                format!(
                    "the namespace {:?} has no search attribute {TENANT_ATTRIBUTE}",
                    self.settings.namespace
                ),
            )),
            // Not knowing is no reason to take the instance out: an authorizer may refuse
            // this instance's role the operator API it is asked on. Said once, then not asked.
            Ok(None) => {
                tracing::warn!(namespace = %self.settings.namespace,
                    "the server refuses to list the namespace's search attributes; TenantId not checked");
                self.tenant_attribute_seen
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            // A passing failure (the namespace answered just before): asked again at the next
            // probe. It latched for good once, and a namespace without the attribute then
            // went on answering ready while every start was refused.
            Err(error) => {
                tracing::debug!(%error, "search attributes not listed; asked again next probe");
                Ok(())
            }
        }
    }
}

/// The search attribute every approval's workflow is started with (and listed by).
pub const TENANT_ATTRIBUTE: &str = "TenantId";

impl TemporalBackend {
    /// Whether the namespace has the [`TENANT_ATTRIBUTE`] search attribute. Without it the
    /// server refuses every start: every submit, allow and deny included, answers 503.
    /// `None` when the server refuses to say (an authorizer denies this role the operator
    /// API, or the server lacks it): that answer does not change, a failed call may.
    pub async fn has_tenant_attribute(&self) -> Result<Option<bool>, BackendError> {
        use std::sync::atomic::Ordering;
        use temporalio_client::tonic::Code;
        if self.tenant_attribute_seen.load(Ordering::Relaxed) {
            return Ok(Some(true));
        }
        let request = ListSearchAttributesRequest {
            namespace: self.settings.namespace.clone(),
        };
        let mut client = self.client.clone();
        let has = self
            .call(
                "list_search_attributes",
                self.settings.call_timeout,
                async move {
                    match OperatorService::list_search_attributes(
                        &mut client,
                        request.into_request(),
                    )
                    .await
                    {
                        Ok(listed) => Ok(Some(
                            listed
                                .into_inner()
                                .custom_attributes
                                .contains_key(TENANT_ATTRIBUTE),
                        )),
                        Err(status)
                            if matches!(
                                status.code(),
                                Code::PermissionDenied | Code::Unimplemented
                            ) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(BackendError::unavailable("list_search_attributes", e)),
                    }
                },
            )
            .await?;
        self.tenant_attribute_seen
            .store(has == Some(true), Ordering::Relaxed);
        Ok(has)
    }
}

/// What [`TemporalBackend::describe_namespace`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// No such namespace: a configuration no retry mends.
    Missing,
    /// It exists; `retention` is `None` when the server does not say.
    Exists { retention: Option<Duration> },
}

/// Whether a `NotFound` is about the namespace, not the workflow: a namespace that is missing
/// (deleted, misspelt in `temporal.namespace`) is an outage of this deployment, and every
/// approval answered 404 through it, which agents take as final.
fn namespace_missing(status: &temporalio_client::tonic::Status) -> bool {
    let message = status.message();
    (message.starts_with("Namespace ") && message.contains("not found"))
        // The failure's type URL: an approval or tenant id cannot hold its '/', so a workflow
        // id quoted in the details cannot imitate it.
        || String::from_utf8_lossy(status.details())
            .contains("/temporal.api.errordetails.v1.NamespaceNotFoundFailure")
}

#[cfg(test)]
mod tests {
    use approvals_core::{ApprovalId, TenantId, Verdict};
    use serde_json::Map;

    use super::*;

    fn pending() -> Approval {
        let now = Timestamp::now();
        Approval {
            id: ApprovalId::parse("r").unwrap(),
            tenant: TenantId::parse("t").unwrap(),
            status: Status::Pending,
            agent_id: "agent".into(),
            submitted_by: "agent".into(),
            action: Map::new(),
            context: Map::new(),
            reasons: vec![],
            policy_version: "v".into(),
            submitted_at: now,
            expires_at: now.plus(Duration::from_secs(3600)),
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            action_digest: None,
        }
    }

    fn settled_by(decision: &DecisionRequest) -> Approval {
        Approval {
            status: decision.verdict.status(),
            decided_by: Some(decision.decided_by.clone()),
            decided_at: Some(decision.at),
            ..pending()
        }
    }

    /// An execution a visibility walk returned twice (running on one server page, closed on a
    /// later one) is one row: its events once, its settled record.
    #[test]
    fn an_approval_seen_twice_by_one_walk_is_one_row() {
        let approval = pending();
        let submitted: AuditEvent =
            crate::record::first_event(AuditEntry::submitted(&approval)).into();
        let decision = DecisionRequest {
            verdict: Verdict::Accept,
            decided_by: "alice".into(),
            reason: None,
            at: Timestamp::now(),
        };
        let accepted = settled_by(&decision);
        let decided = crate::record::decided_event(&accepted).unwrap();
        let other = Approval {
            id: ApprovalId::parse("other").unwrap(),
            ..pending()
        };
        let rows = Row::united(vec![
            Row {
                approval: approval.clone(),
                events: vec![submitted.clone()],
            },
            Row {
                approval: other.clone(),
                events: vec![],
            },
            Row {
                approval: accepted.clone(),
                events: vec![submitted.clone(), decided.clone()],
            },
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].approval, accepted);
        assert_eq!(rows[0].events, vec![submitted, decided]);
        assert_eq!(rows[1].approval, other);
    }

    /// Every audit bound is one visibility can parse: a year within 0000 to 9999.
    #[test]
    fn audit_bounds_stay_within_the_years_visibility_reads() {
        let tenant = TenantId::parse("t").unwrap();
        let far = TemporalBackend::audit_query(
            &tenant,
            Some(Timestamp::from_millis(999_999_999_999_999)),
        );
        assert!(
            far.contains("CloseTime >= '9999-12-31T23:59:59.999Z'"),
            "{far}"
        );
        let early = TemporalBackend::audit_query(
            &tenant,
            Some(Timestamp::from_millis(-62_167_219_100_000)),
        );
        assert!(!early.contains("CloseTime"), "{early}");
        let now = Timestamp::now();
        let usual = TemporalBackend::audit_query(&tenant, Some(now));
        let bound = now.minus(AUDIT_CLOCK_MARGIN);
        assert!(
            usual.contains(&format!("CloseTime >= '{bound}'")),
            "{usual}"
        );
        // Running executions started before the bound hold no event after it.
        assert!(
            usual.contains(&format!(
                "ExecutionStatus = 'Running' AND StartTime >= '{bound}'"
            )),
            "{usual}"
        );
    }

    /// An update applied before its call failed reads back as this decision, not as someone
    /// else's: the winning reviewer is answered 200, and a dual soak mirrors it.
    #[test]
    fn a_record_settled_by_this_very_decision_is_its_win() {
        let ours = DecisionRequest::now(Verdict::Accept, "alice", None);
        let outcome = TemporalBackend::settled_outcome(Some(settled_by(&ours)), &ours, true);
        assert!(
            matches!(outcome, Some(DecisionOutcome::Decided(_))),
            "{outcome:?}"
        );

        // The same reviewer's earlier decision, or another reviewer's, stays a 409.
        let earlier = DecisionRequest {
            at: Timestamp::from_millis(ours.at.as_millis() - 1),
            ..ours.clone()
        };
        let outcome = TemporalBackend::settled_outcome(Some(settled_by(&earlier)), &ours, true);
        assert!(
            matches!(outcome, Some(DecisionOutcome::AlreadyDecided(_))),
            "{outcome:?}"
        );
        let bob = DecisionRequest::now(Verdict::Accept, "bob", None);
        let outcome = TemporalBackend::settled_outcome(Some(settled_by(&bob)), &ours, true);
        assert!(
            matches!(outcome, Some(DecisionOutcome::AlreadyDecided(_))),
            "{outcome:?}"
        );
        let rejected = DecisionRequest {
            verdict: Verdict::Reject,
            ..ours.clone()
        };
        let outcome = TemporalBackend::settled_outcome(Some(settled_by(&rejected)), &ours, true);
        assert!(
            matches!(outcome, Some(DecisionOutcome::AlreadyDecided(_))),
            "{outcome:?}"
        );
        // Refused outright (no call failed): a twin request of the same reviewer in the same
        // millisecond lost, whatever the record looks like.
        let outcome = TemporalBackend::settled_outcome(Some(settled_by(&ours)), &ours, false);
        assert!(
            matches!(outcome, Some(DecisionOutcome::AlreadyDecided(_))),
            "{outcome:?}"
        );
    }
}
