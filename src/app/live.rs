//! Live events: a tenant's approvals being parked, decided and expiring, as they are recorded.
//!
//! They are read from the tenant's audit, the same record the decision log writes, so a stream
//! sees what every instance did, in the order recorded, and a client that reconnects resumes
//! from the last event id it saw (the audit's cursor). Each open stream reads one page every
//! `events_poll_interval`; streams per tenant are bounded so that no one tenant's dashboards
//! can take the instance's backend calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use approvals_core::{
    Approval, ApprovalId, AuditEvent, AuditKind, Listing, Page, Status, TenantId, Timestamp,
};
use serde_json::Value;

use super::{AppError, Approvals};
use crate::auth::{Permission, Principal, TenantScope};
use crate::metrics::ErrorSource;

/// Events one read returns at most; a full page is followed by the next at once.
const PAGE: usize = 100;

/// What happened to an approval, as a live stream names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// Policy said `require_approval`: it waits for a reviewer.
    Parked,
    /// A reviewer accepted or rejected it.
    Decided,
    /// Its TTL ran out: an automatic rejection.
    Expired,
}

impl LiveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::Decided => "decided",
            Self::Expired => "expired",
        }
    }

    /// The live kind of an audit event; `None` for what no live stream shows (an `allow` or
    /// `deny` that parked nothing, a policy change, a migration).
    pub fn of(event: &AuditEvent) -> Option<Self> {
        match event.kind {
            // Parked here, or a pending record the ADR v1 service parked, adopted: reviewers
            // hear of it the same way (the v1 service, still running during a migration,
            // tells no one).
            AuditKind::Submitted => {
                let said = |field: &str| event.details.get(field).and_then(Value::as_str);
                let parked = match said("adopted_from") {
                    // Adopted: parked by the v1 service, and still waiting only if pending.
                    Some(_) => said("status") == Some("pending"),
                    None => said("decision") == Some("require_approval"),
                };
                parked.then_some(Self::Parked)
            }
            AuditKind::Accepted | AuditKind::Rejected => Some(Self::Decided),
            AuditKind::Expired => Some(Self::Expired),
            AuditKind::Migrated | AuditKind::Policy => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub kind: LiveKind,
    pub event: AuditEvent,
}

/// What open streams on this instance are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StreamKey {
    Tenant(TenantId),
    /// Callers are their scope and subject: a platform admin "alice" and a tenant's reviewer
    /// "alice", or reviewers "ana" of two customers, are different people.
    CallerIn(TenantId, TenantScope, String),
    /// A caller's streams of every tenant: a platform admin's token may read any tenant, and
    /// the per-tenant bounds alone let it open streams on as many made-up tenants as it liked.
    Caller(TenantScope, String),
}

/// Open streams per tenant on this instance.
#[derive(Default)]
pub(super) struct LiveStreams(Arc<Mutex<HashMap<StreamKey, usize>>>);

/// One open stream's place in the counts; released when the stream is dropped.
struct Slot {
    streams: Arc<Mutex<HashMap<StreamKey, usize>>>,
    keys: [StreamKey; 3],
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

/// The streams one caller (a token's or a session's subject) may hold of a tenant's share: a
/// fifth, so that one reviewer's tabs or a script cannot take every stream of the tenant.
fn per_caller(per_tenant: usize) -> usize {
    (per_tenant / 5).max(1)
}

/// An open live stream: where it is in the tenant's audit.
pub struct LiveStream {
    tenant: TenantId,
    /// The last event read (shown or not): the next read starts after it.
    after: Option<String>,
    /// Before any event was read without a `Last-Event-ID`: only what is recorded from now on.
    since: Timestamp,
    /// Where a client that saw no event yet resumes: the stream's start, as an event id.
    start_id: Option<String>,
    /// On an engine whose audit settles late, where the stream re-reads from instead.
    unsettled: Option<Unsettled>,
    /// Its place in the counts of open streams, unless taken ([`LiveStream::take_place`]).
    slot: Option<Slot>,
}

/// A stream's place in an audit that settles late (Temporal): every read starts again
/// `settle` before the newest event shown, and skips what it showed already.
struct Unsettled {
    settle: std::time::Duration,
    newest: Timestamp,
    /// Where the next page of this re-read starts, after a full page.
    page_after: Option<String>,
    shown: super::RecentIds,
    /// A resumed stream's `Last-Event-ID`, not shown again. What was recorded in the settle
    /// window before it is: the client may have left before some of it became visible, and
    /// repeating an event (clients drop ids they saw) is better than missing one.
    resumed_at: Option<String>,
    /// A stream opened without a `Last-Event-ID` starts now: until its first pass over the
    /// settle window ends, events recorded before this are noted as shown, not sent. The
    /// first read sent the whole window before the connection (15 s of events), and a bot
    /// restarted with no memory of ids acted on them again. Those that become visible only
    /// later (written late) are still sent.
    hide_before: Option<Timestamp>,
}

impl Unsettled {
    fn reread_from(&self) -> Timestamp {
        self.newest.minus(self.settle)
    }

    /// The live events of one page of a re-read, each once however often it is read.
    fn take(&mut self, items: Vec<AuditEvent>) -> Vec<LiveEvent> {
        let mut events = Vec::new();
        for event in items {
            let kind = LiveKind::of(&event);
            let the_resumed_one = self.resumed_at.as_deref() == Some(event.event_id.as_str());
            // Only what would be sent is remembered: a catch-up over a busy hour kept every
            // allow and deny it read too.
            if the_resumed_one
                || (kind.is_some() && !self.shown.insert(event.timestamp, event.event_id.clone()))
            {
                continue;
            }
            self.newest = self.newest.max(event.timestamp);
            if self
                .hide_before
                .is_some_and(|start| event.timestamp < start)
            {
                continue;
            }
            if let Some(kind) = kind {
                events.push(LiveEvent { kind, event });
            }
        }
        if self.page_after.is_none() {
            // The pass is over: what it hid was before the stream's start.
            self.hide_before = None;
        }
        // What is older than the next read's start can no longer come back, in this pass (its
        // pages go on in time) or the next: forgotten after each page, not only once a pass
        // ends (a resume an hour back kept every id of that hour until it caught up).
        self.shown.prune(self.reread_from());
        events
    }
}

impl LiveStream {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// For a stream opened without a `Last-Event-ID`, an id standing for its start. Sent
    /// before any event, it lets a client whose stream ends or breaks before the first event
    /// resume from there rather than from its reconnect, missing what happened in between.
    pub fn start_id(&self) -> Option<&str> {
        self.start_id.as_deref()
    }

    /// Where the stream has read up to, as an id a client may resume after: the last event
    /// read, shown or not. `None` on an engine whose audit settles late (its re-reads go by
    /// time) or before any read.
    pub fn read_up_to(&self) -> Option<&str> {
        match self.unsettled {
            Some(_) => None,
            None => self.after.as_deref(),
        }
    }

    /// The stream's place in the counts of open streams, given back when what is returned is
    /// dropped: at the stream's end, though the stream itself may be dropped much later (an
    /// HTTP/2 client that grants no window leaves it unread, `crate::api::events`).
    pub fn take_place(&mut self) -> impl Send + Sync + 'static {
        self.slot.take()
    }
}

impl Approvals {
    /// Opens a live stream of `tenant` for `caller` (reviewers and admins: whoever may list),
    /// after `last_event_id` when the client resumes, else from now, and reads its first page:
    /// a bad id, a refused caller or a backend down is an error here, before anything is sent.
    pub async fn open_live(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        last_event_id: Option<String>,
    ) -> Result<(LiveStream, Vec<LiveEvent>), AppError> {
        let last_event_id = last_event_id.filter(|id| !id.is_empty());
        let settle = self.engine.audit_settle_time();
        // Identifiers before authorization (the contract's order) and before a stream's place.
        if let Some(id) = &last_event_id {
            if settle.is_zero() {
                self.engine
                    .check_cursor(Listing::Audit, id)
                    .map_err(|e| self.engine_failed(e))?;
            } else if AuditEvent::instant_of_id(id).is_none() {
                // Re-reads go by time, so the engine never sees the id: it is checked here.
                return Err(AppError::InvalidOption(
                    "Last-Event-ID: not an event id".into(),
                ));
            }
        }
        self.authorize(caller, Permission::List, tenant)?;
        let slot = {
            let mut open = self
                .live_streams
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let max = self.settings.max_event_streams_per_tenant;
            let keys = [
                StreamKey::Tenant(tenant.clone()),
                StreamKey::CallerIn(tenant.clone(), caller.scope.clone(), caller.subject.clone()),
                StreamKey::Caller(caller.scope.clone(), caller.subject.clone()),
            ];
            let [tenant_open, caller_open, caller_total] = keys
                .each_ref()
                .map(|key| open.get(key).copied().unwrap_or(0));
            // A caller's streams of all tenants together: as many as one tenant's.
            if tenant_open >= max || caller_open >= per_caller(max) || caller_total >= max {
                return Err(AppError::TooManyStreams {
                    tenant: tenant.clone(),
                    open: tenant_open,
                });
            }
            for key in &keys {
                *open.entry(key.clone()).or_default() += 1;
            }
            Slot {
                streams: self.live_streams.0.clone(),
                keys,
            }
        };
        let since = Timestamp::now();
        // From now: after the audit's last event where the engine's ids are stamped by its own
        // clock (Redis), else from the instance's clock. Starting from the instance's clock on
        // Redis missed what was recorded in the first moments when the instance's clock ran
        // ahead of Redis', and replayed older events when it ran behind.
        let (after, start_id) = match last_event_id {
            Some(id) => (
                Some(self.within_resume_window(caller, tenant, id, since)),
                None,
            ),
            None => match self.engine.audit_end(tenant).await {
                Ok(Some(end)) => (Some(end.clone()), Some(end)),
                Ok(None) => (None, Some(AuditEvent::id_just_before(since))),
                Err(error) => return Err(self.engine_failed(error)),
            },
        };
        let resumed_at = after.as_deref().map(AuditEvent::instant_of_id);
        let unsettled = (!settle.is_zero()).then(|| Unsettled {
            settle,
            newest: resumed_at.flatten().unwrap_or(since),
            page_after: None,
            shown: super::RecentIds::default(),
            resumed_at: after.clone(),
            // Also for a client resuming from a stream's start id: it saw nothing before that.
            hide_before: match after.as_deref() {
                None => Some(since),
                Some(id) => AuditEvent::start_of(id),
            },
        });
        let mut stream = LiveStream {
            tenant: tenant.clone(),
            after,
            since,
            start_id,
            unsettled,
            slot: Some(slot),
        };
        let (first, _) = self.read_live(&mut stream).await?;
        Ok((stream, first))
    }

    /// `last_event_id`, or for a caller who may not read the audit (a reviewer) and asks for
    /// more than `approvals.events_resume_window` of history, the start of that window: a
    /// resume is for what a reconnect missed, not a way around the audit's permission.
    fn within_resume_window(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        last_event_id: String,
        now: Timestamp,
    ) -> String {
        if caller.may(Permission::Audit, tenant) {
            return last_event_id;
        }
        let window_start = now.minus(self.settings.events_resume_window);
        match AuditEvent::instant_of_id(&last_event_id) {
            Some(at) if at < window_start => AuditEvent::id_just_before(window_start),
            // Not an id: the engine refuses it as such.
            _ => last_event_id,
        }
    }

    /// The next events of an open stream, and whether more are already waiting (a full page).
    pub async fn read_live(
        &self,
        stream: &mut LiveStream,
    ) -> Result<(Vec<LiveEvent>, bool), AppError> {
        if let Some(unsettled) = &mut stream.unsettled {
            return self.read_unsettled(&stream.tenant, unsettled).await;
        }
        let since = stream.after.is_none().then_some(stream.since);
        let page = self
            .engine
            .audit(&stream.tenant, since, stream.after.as_deref(), PAGE)
            .await
            .map_err(|e| self.engine_failed(e))?;
        // A page of entries the engine passed over (unreadable) is empty but goes on.
        if let Some(next) = page
            .items
            .last()
            .map(|e| &e.event_id)
            .or(page.next_cursor.as_ref())
        {
            stream.after = Some(next.clone());
        }
        let more = page.next_cursor.is_some();
        let events = page
            .items
            .into_iter()
            .filter_map(|event| LiveKind::of(&event).map(|kind| LiveEvent { kind, event }))
            .collect();
        Ok((events, more))
    }

    /// [`Approvals::read_live`] on an audit that settles late.
    async fn read_unsettled(
        &self,
        tenant: &TenantId,
        unsettled: &mut Unsettled,
    ) -> Result<(Vec<LiveEvent>, bool), AppError> {
        let from = unsettled.reread_from();
        let page = self
            .engine
            .audit(tenant, Some(from), unsettled.page_after.as_deref(), PAGE)
            .await
            .map_err(|e| self.engine_failed(e))?;
        let more = page.next_cursor.is_some();
        unsettled.page_after = page.next_cursor;
        Ok((unsettled.take(page.items), more))
    }

    /// The tenant's audit after `after` (or from `since`), for the service's own background
    /// tasks (webhooks): there is no caller to authorise. Failures count as `chore`, not
    /// `request`: no client was answered an error, and the task logs its own.
    pub async fn read_audit_for_service(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        since: Option<Timestamp>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, AppError> {
        self.engine
            .audit(tenant, since, after, limit)
            .await
            .map_err(|e| self.engine_failed_in(e, ErrorSource::Chore))
    }

    /// One approval as of now, for the service's own background tasks (webhooks).
    pub async fn get_for_service(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, AppError> {
        self.engine
            .get(tenant, id)
            .await
            .map_err(|e| self.engine_failed_in(e, ErrorSource::Chore))
    }

    /// The tenant's approvals in `status`, oldest first, after `cursor` (a page's
    /// `next_cursor`), for the service's own background tasks ("expiring soon" notifications).
    pub async fn list_for_service(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Approval>, AppError> {
        self.engine
            .list(tenant, status, cursor, limit)
            .await
            .map_err(|e| self.engine_failed_in(e, ErrorSource::Chore))
    }

    /// How late an event may appear in the engine's audit behind later ones.
    pub fn audit_settle_time(&self) -> std::time::Duration {
        self.engine.audit_settle_time()
    }

    /// How long audit events are kept (`approvals.audit_retention`).
    pub fn audit_retention(&self) -> std::time::Duration {
        self.settings.audit_retention
    }

    /// The lifetime the tenant's approvals are parked with now.
    pub fn ttl_for(&self, tenant: &TenantId) -> std::time::Duration {
        self.settings.ttl_for(tenant)
    }

    /// How often an open stream reads the audit.
    pub fn live_poll_interval(&self) -> std::time::Duration {
        self.settings.events_poll_interval
    }

    /// How long one live stream lasts before the client is made to reconnect.
    pub fn live_max_duration(&self) -> std::time::Duration {
        self.settings.events_max_duration
    }

    /// Resolves when the service begins to shut down: open streams end then.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approvals_core::ApprovalId;
    use serde_json::json;

    fn event(kind: AuditKind, details: Value) -> AuditEvent {
        AuditEvent {
            event_id: "1-0".into(),
            timestamp: Timestamp::now(),
            tenant: TenantId::parse("acme").unwrap(),
            approval_id: ApprovalId::parse("req-1").unwrap(),
            kind,
            actor: "someone".into(),
            details,
        }
    }

    /// An adopted v1 record is parked (for streams and webhooks) only while it is pending: its
    /// event now carries the `require_approval` a submit here records, which alone read as
    /// "parked" for a record the v1 service had already decided.
    #[test]
    fn an_adopted_record_is_parked_only_while_pending() {
        let adopted = |status: &str| {
            let details =
                json!({"decision": "require_approval", "adopted_from": "adr-v1", "status": status});
            LiveKind::of(&event(AuditKind::Submitted, details))
        };
        assert_eq!(adopted("pending"), Some(LiveKind::Parked));
        assert_eq!(adopted("accepted"), None);
        let submitted = json!({"decision": "require_approval"});
        assert_eq!(
            LiveKind::of(&event(AuditKind::Submitted, submitted)),
            Some(LiveKind::Parked)
        );
        let allowed = json!({"decision": "allow"});
        assert_eq!(LiveKind::of(&event(AuditKind::Submitted, allowed)), None);
    }

    /// A stream resumed an hour back on an audit that settles late remembers what it sent
    /// within the settle window only, page after page, not every id of the hour until it has
    /// caught up (and none of the allows and denies it never sends).
    #[test]
    fn a_long_catch_up_remembers_only_the_settle_window() {
        let start = Timestamp::now().minus(std::time::Duration::from_secs(3600));
        let mut unsettled = Unsettled {
            settle: std::time::Duration::from_secs(15),
            newest: start,
            page_after: Some("more".into()),
            shown: super::super::RecentIds::default(),
            resumed_at: None,
            hide_before: None,
        };
        let mut sent = 0;
        // An hour at ten events a second, half of them parks, in pages of 100.
        for page in 0..360 {
            let items = (0..100)
                .map(|n| {
                    let at = start.plus(std::time::Duration::from_millis(page * 10_000 + n * 100));
                    let decision = if n % 2 == 0 {
                        "require_approval"
                    } else {
                        "allow"
                    };
                    AuditEvent {
                        event_id: format!("{}-{n}", at.as_millis()),
                        timestamp: at,
                        ..event(AuditKind::Submitted, json!({"decision": decision}))
                    }
                })
                .collect();
            sent += unsettled.take(items).len();
            assert!(
                unsettled.shown.len() <= 100,
                "page {page}: {} ids remembered",
                unsettled.shown.len()
            );
        }
        assert_eq!(sent, 360 * 50, "every park sent once");
    }

    #[test]
    fn only_parking_adopting_pending_deciding_and_expiring_are_live_events() {
        let submitted = |decision: &str| event(AuditKind::Submitted, json!({"decision": decision}));
        // Taken over from the ADR v1 service: waiting for a reviewer, or decided there.
        let adopted = |status: &str| {
            event(
                AuditKind::Submitted,
                json!({"adopted_from": "adr-v1", "status": status}),
            )
        };
        let kinds: Vec<Option<LiveKind>> = [
            submitted("require_approval"),
            submitted("allow"),
            submitted("deny"),
            event(AuditKind::Accepted, json!({})),
            event(AuditKind::Rejected, json!({})),
            event(AuditKind::Expired, json!({})),
            event(AuditKind::Policy, json!({})),
            event(AuditKind::Migrated, json!({})),
            adopted("pending"),
            adopted("accepted"),
        ]
        .iter()
        .map(LiveKind::of)
        .collect();
        use LiveKind::*;
        assert_eq!(
            kinds,
            [
                Some(Parked),
                None,
                None,
                Some(Decided),
                Some(Decided),
                Some(Expired),
                None,
                None,
                Some(Parked),
                None
            ]
        );
    }
}
