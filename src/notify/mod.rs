//! Webhook notifications: reviewers learn that something waits, was decided, expired or is
//! about to expire, in their chat or their own systems.
//!
//! Three background loops per instance, none on the request path:
//! - **read**: for each tenant with webhooks, the one instance holding the tenant's lock reads
//!   its audit (the same events as the live stream, ADR-0012) from a stored cursor and queues a
//!   delivery per event and subscribed webhook; it also queues "expiring soon" for pending
//!   approvals in the last share of their TTL (`notifications.expiring_soon_share`);
//! - **send**: claims due deliveries (one instance at a time per delivery, by lease), POSTs
//!   them signed (`X-Approvals-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`), and
//!   on failure retries with exponential backoff until `notifications.max_attempts`, then keeps
//!   it as a dead letter;
//! - the queue and cursors are in Redis (`store`), so a restart loses nothing: at least once,
//!   with a stable `id` in every body for receivers to drop duplicates.

pub mod egress;
pub mod payload;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use approvals_core::{Approval, ApprovalId, AuditEvent, Status, TenantId, Timestamp};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::{AppError, Approvals, LiveKind, RecentIds};
use crate::auth::{Permission, Principal};
use crate::config::NotificationSettings;
use egress::EgressPolicy;
use store::{Delivery, Store};

/// A failed background step, as the reader and sender loops log it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Parked,
    Decided,
    Expired,
    /// A pending approval entered the last share of its TTL.
    ExpiringSoon,
}

impl NotifyEvent {
    pub const ALL: [Self; 4] = [
        Self::Parked,
        Self::Decided,
        Self::Expired,
        Self::ExpiringSoon,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::Decided => "decided",
            Self::Expired => "expired",
            Self::ExpiringSoon => "expiring_soon",
        }
    }

    fn of(kind: LiveKind) -> Self {
        match kind {
            LiveKind::Parked => Self::Parked,
            LiveKind::Decided => Self::Decided,
            LiveKind::Expired => Self::Expired,
        }
    }
}

/// A webhook none of whose attempts has ended for this long is answering slowly or not at
/// all: what else is claimed for it goes back to the queue for a request timeout rather than
/// being held for its next free slot.
const SLOW_RECEIVER: Duration = Duration::from_secs(1);

/// The factor a retry's wait is multiplied by, drawn for each retry.
pub(crate) const JITTER: std::ops::Range<f64> = 0.75..1.25;

/// What an attempt tells of its webhook's receiver.
#[derive(Debug, Clone, Copy)]
struct Answered {
    /// It did not take deliveries: no connection, a timeout, a 5xx, a 429 (not a refusal of
    /// this one delivery, a 4xx).
    down: bool,
    /// The pause it asked for (`Retry-After`, at most `retry_max`).
    asked: Option<Duration>,
    /// It took the delivery (a 2xx).
    taken: bool,
    /// It gave no answer at all: no connection, or a timeout (a receiver that hung).
    unanswered: bool,
}

/// The longest a failing webhook is paused on an instance between attempts (its deliveries'
/// own backoff goes on to `retry_max`): a receiver that is back is tried within a minute.
const MAX_WEBHOOK_PAUSE: Duration = Duration::from_secs(60);

/// One webhook's attempts under way on this instance.
struct InFlight {
    attempts: usize,
    /// When one of them last ended (or the first began).
    last_ended: tokio::time::Instant,
}

/// A webhook, as deliveries name it: (tenant, webhook id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WebhookKey(String, String);

impl WebhookKey {
    fn of(delivery: &Delivery) -> Self {
        Self(delivery.tenant.clone(), delivery.webhook_id.clone())
    }
}

/// When the deliveries put back for a busy webhook come due again: one after another, at the
/// pace its receiver takes them (its recent attempt time over its concurrency). Put back all
/// due at once, a backlog came due all at once, and the sender claimed it and put it back
/// again without pause, ahead of every other tenant's newer deliveries in the queue's order,
/// for as long as the backlog lasted.
#[derive(Default)]
struct Pacing {
    by_webhook: HashMap<WebhookKey, Pace>,
}

struct Pace {
    /// When the last delivery put back for it comes due.
    last_due: Timestamp,
    /// How long its attempts take, a moving average (until one ends: the send interval).
    attempt: Duration,
    /// Nothing is sent to it before this: it answered `Retry-After` (a rate-limited Slack
    /// webhook). Honoured for the delivery that was answered only, the others kept hitting it
    /// at their pace, each earning a 429 and an attempt towards its dead letter. Or it failed
    /// as if down too often in a row: a pause that doubles (see [`Pacing::attempted`]).
    not_before: Timestamp,
    /// Its attempts that found the receiver down since the last that did not.
    streak: u32,
    /// The pauses that streak earned, one after another.
    pauses: u32,
    /// Found unanswering (a timeout, no connection) or silent since its deferred deliveries
    /// were last looked at: what is put back for it may lie far out, paced by another instance
    /// or by this one before a restart, beyond what `last_due` knows. Not for a receiver that
    /// answers 5xx or 429: its retries' backoff stands (pulled forward at each success, a
    /// failing delivery spent its attempts in minutes, not hours).
    deferred_unknown: bool,
}

impl Pace {
    /// A webhook first met `now`, whose attempts are taken to last `attempt`.
    fn new(now: Timestamp, attempt: Duration) -> Self {
        Self {
            last_due: now,
            attempt,
            not_before: now,
            streak: 0,
            pauses: 0,
            deferred_unknown: false,
        }
    }
}

impl Pacing {
    /// Due times for `deliveries` of one webhook: the first `after` from now (or after the
    /// last one already put back), each next one an attempt's share later.
    fn due(
        &mut self,
        deliveries: Vec<Delivery>,
        after: Duration,
        concurrency: usize,
    ) -> Vec<(String, Timestamp)> {
        let now = Timestamp::now();
        deliveries
            .into_iter()
            .map(|delivery| {
                let pace = self
                    .by_webhook
                    .entry(WebhookKey::of(&delivery))
                    .or_insert_with(|| Pace::new(now, after));
                let step = (pace.attempt / concurrency.max(1) as u32).max(Duration::from_millis(1));
                pace.last_due = pace
                    .last_due
                    .plus(step)
                    .max(now.plus(after))
                    .max(pace.not_before);
                (delivery.id, pace.last_due)
            })
            .collect()
    }

    /// An attempt to `webhook` took `took` and was `answered`. A receiver found down
    /// `streak` times in a row (its concurrency: a whole wave of attempts) is paused for
    /// `pause(pauses in a row)`, unless it asked for a pause of its own; the attempts still
    /// in flight when a pause begins end in it and earn none. Each delivery backed off alone,
    /// so a receiver failing at once (a load balancer's instant 502) with thousands queued
    /// took every delivery's first attempt back to back, and their retries in waves. One
    /// delivery refused (a 4xx), or an occasional failure, pauses nothing.
    fn attempted(
        &mut self,
        webhook: &WebhookKey,
        took: Duration,
        answered: Answered,
        streak: u32,
        pause: impl FnOnce(u32) -> Duration,
    ) {
        let now = Timestamp::now();
        let pace = match self.by_webhook.get_mut(webhook) {
            Some(pace) => pace,
            None if answered.down || answered.asked.is_some() => self
                .by_webhook
                .entry(webhook.clone())
                .or_insert_with(|| Pace::new(now, took)),
            None => return,
        };
        pace.attempt = (pace.attempt * 3 + took) / 4;
        let mut paused = answered.asked;
        if answered.unanswered {
            pace.deferred_unknown = true;
        }
        if answered.down {
            pace.streak = pace.streak.saturating_add(1);
            if pace.streak >= streak && now >= pace.not_before {
                pace.pauses = pace.pauses.saturating_add(1);
                paused = paused.or(Some(pause(pace.pauses)));
            }
        } else {
            (pace.streak, pace.pauses) = (0, 0);
        }
        if let Some(paused) = paused {
            pace.not_before = pace.not_before.max(now.plus(paused));
        }
    }

    /// An attempt to `webhook` went through, taking `took`: if what was put back for it is
    /// due past `beyond` (paced while the receiver was down or slow), it is due from `beyond`
    /// on now, at this attempt's pace; the step between two, if so. Paced behind a receiver
    /// that hung, a backlog came due one every few seconds long after it was back (an hour
    /// and more for a few thousand), and newer deliveries behind it. A webhook this instance
    /// has not met (it started since, or forgot it idle) may have such a backlog too, paced
    /// by another instance or by this one before a restart: brought forward as well (nothing
    /// moves if nothing is due past `beyond`), and so is one that gave this instance no answer since it
    /// last looked (a restarted instance tried the hung receiver before it came back).
    fn recovered(
        &mut self,
        webhook: &WebhookKey,
        took: Duration,
        concurrency: usize,
        beyond: Timestamp,
    ) -> Option<Duration> {
        let step = (took / concurrency.max(1) as u32).max(Duration::from_millis(1));
        let Some(pace) = self.by_webhook.get(webhook) else {
            self.by_webhook
                .insert(webhook.clone(), Pace::new(Timestamp::now(), took));
            return Some(step);
        };
        if (pace.last_due <= beyond && !pace.deferred_unknown) || pace.not_before > Timestamp::now()
        {
            return None;
        }
        Some(step)
    }

    /// What [`Pacing::recovered`] asked for was done: `moved` deliveries brought forward to
    /// `beyond` on, at the pace of the attempt that took `took`, or `None` when Redis did not
    /// answer (then the next attempt that goes through tries again, and what is put back meanwhile
    /// is paced as before; once given up, a backlog trickled in at the hung receiver's pace).
    /// Nothing moved: what is put back for `webhook` next is paced from now, not from behind a
    /// backlog that is not there (a lone delivery that went through made a burst's overflow
    /// wait a lease).
    fn pulled(
        &mut self,
        webhook: &WebhookKey,
        beyond: Timestamp,
        took: Duration,
        moved: Option<u64>,
    ) {
        if let Some(pace) = self.by_webhook.get_mut(webhook) {
            pace.deferred_unknown = moved.is_none();
            match moved {
                Some(0) => pace.last_due = pace.last_due.min(Timestamp::now()),
                // Put back from now on, they come after those brought forward.
                Some(_) => {
                    pace.last_due = beyond;
                    pace.attempt = took;
                }
                None => {}
            }
        }
    }

    /// No attempt to `webhook` has ended for `silent`: its attempts take at least that long.
    fn silent_for(&mut self, webhook: &WebhookKey, silent: Duration) {
        let now = Timestamp::now();
        let pace = self
            .by_webhook
            .entry(webhook.clone())
            .or_insert_with(|| Pace::new(now, silent));
        pace.attempt = pace.attempt.max(silent);
        pace.deferred_unknown = true;
    }

    /// Until when `webhook` asked not to be sent anything, if that is still ahead.
    fn held_back(&self, webhook: &WebhookKey) -> Option<Timestamp> {
        let until = self.by_webhook.get(webhook)?.not_before;
        (until > Timestamp::now()).then_some(until)
    }

    /// Forgets webhooks with nothing put back lately, so the map holds the busy ones only.
    fn forget_idle(&mut self) {
        let horizon = Timestamp::now().as_millis() - 60_000;
        self.by_webhook.retain(|_, pace| {
            pace.last_due.as_millis() > horizon || pace.not_before > Timestamp::now()
        });
    }
}

/// Claimed deliveries waiting for a slot of their webhook, oldest first.
#[derive(Default)]
struct Held {
    by_webhook: HashMap<WebhookKey, std::collections::VecDeque<Delivery>>,
    len: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.len
    }

    fn count(&self, webhook: &WebhookKey) -> usize {
        self.by_webhook.get(webhook).map_or(0, |queue| queue.len())
    }

    /// Held for `tenant`'s webhooks (a walk of at most `send_concurrency` entries).
    fn for_tenant(&self, tenant: &str) -> usize {
        self.by_webhook
            .iter()
            .filter(|(webhook, _)| webhook.0 == tenant)
            .map(|(_, queue)| queue.len())
            .sum()
    }

    fn push(&mut self, webhook: WebhookKey, delivery: Delivery) {
        self.by_webhook
            .entry(webhook)
            .or_default()
            .push_back(delivery);
        self.len += 1;
    }

    fn pop(&mut self, webhook: &WebhookKey) -> Option<Delivery> {
        let queue = self.by_webhook.get_mut(webhook)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            self.by_webhook.remove(webhook);
        }
        self.len -= usize::from(next.is_some());
        next
    }

    /// What is held for webhooks none of whose attempts has ended for [`SLOW_RECEIVER`].
    fn take_stalled(&mut self, in_flight: &HashMap<WebhookKey, InFlight>) -> Vec<Delivery> {
        let stalled: Vec<WebhookKey> = self
            .by_webhook
            .keys()
            .filter(|w| {
                in_flight
                    .get(*w)
                    .is_none_or(|busy| busy.last_ended.elapsed() >= SLOW_RECEIVER)
            })
            .cloned()
            .collect();
        let taken: Vec<Delivery> = stalled
            .iter()
            .filter_map(|w| self.by_webhook.remove(w))
            .flatten()
            .collect();
        self.len -= taken.len();
        taken
    }

    /// Everything held for `webhook`.
    fn take(&mut self, webhook: &WebhookKey) -> Vec<Delivery> {
        let taken: Vec<Delivery> = self
            .by_webhook
            .remove(webhook)
            .into_iter()
            .flatten()
            .collect();
        self.len -= taken.len();
        taken
    }

    fn take_all(&mut self) -> Vec<Delivery> {
        self.len = 0;
        self.by_webhook
            .drain()
            .flat_map(|(_, queue)| queue)
            .collect()
    }
}

/// How a delivery's body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// This service's JSON event (documented in docs/webhooks.md).
    #[default]
    Json,
    /// A Slack incoming-webhook message whose button opens the inbox.
    Slack,
}

/// One tenant webhook as stored (the secret is shown to its creator once, never listed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub events: Vec<NotifyEvent>,
    pub format: WebhookFormat,
    pub secret: String,
    pub created_at: Timestamp,
}

/// The reader's cursor in a tenant's audit.
#[derive(Debug, PartialEq)]
enum Cursor {
    /// After this event id.
    After(String),
    /// From this instant: no event read yet, or (on an engine whose audit settles late) the
    /// newest event's timestamp.
    Since(Timestamp),
    /// Part way through re-reading an unsettled audit from `from`, when that stretch held more
    /// than one pass reads: go on after the engine's cursor `after`; `newest` is the newest
    /// timestamp read in it so far. Without it a stretch of more events than a pass reads was
    /// read again from its start on every pass, and nothing after it was ever reached.
    Sweep {
        from: Timestamp,
        newest: Timestamp,
        after: String,
    },
}

impl Cursor {
    /// What [`Store::cursor`] holds; anything else (a hand edit) reads from now on.
    fn parse(text: &str) -> Self {
        let sweep = || {
            let mut parts = text.strip_prefix("sweep:")?.splitn(3, ':');
            let from = parts.next()?.parse().ok()?;
            let newest = parts.next()?.parse().ok()?;
            let after = parts.next().filter(|a| !a.is_empty())?.to_owned();
            Some(Self::Sweep {
                from: Timestamp::from_millis(from),
                newest: Timestamp::from_millis(newest),
                after,
            })
        };
        if let Some(id) = text.strip_prefix("id:") {
            Self::After(id.to_owned())
        } else if let Some(at) = text.strip_prefix("since:") {
            Self::Since(Timestamp::from_millis(at.parse().unwrap_or(0)))
        } else {
            sweep().unwrap_or_else(|| Self::Since(Timestamp::now()))
        }
    }

    fn render(&self) -> String {
        match self {
            Self::After(id) => format!("id:{id}"),
            Self::Since(at) => format!("since:{}", at.as_millis()),
            Self::Sweep {
                from,
                newest,
                after,
            } => format!("sweep:{}:{}:{after}", from.as_millis(), newest.as_millis()),
        }
    }

    /// The instant the cursor stands at (also for an event id of the other engine; a sweep
    /// read by an engine whose audit settles at once starts again at its beginning).
    fn instant(&self) -> Timestamp {
        match self {
            Self::Since(at) | Self::Sweep { from: at, .. } => *at,
            Self::After(id) => AuditEvent::instant_of_id(id).unwrap_or_else(Timestamp::now),
        }
    }
}

/// The notifier: the store, the HTTP client, and what the loops need to know.
pub struct Notifier {
    store: Store,
    app: Arc<Approvals>,
    settings: NotificationSettings,
    /// Where reviewers reach the inbox (`ui.public_url`), for links in the payloads.
    inbox_base: Option<String>,
    http: reqwest::Client,
    egress: Arc<EgressPolicy>,
    /// This instance's name in the tenants' reader locks.
    instance: String,
    /// How late an event may appear in the engine's audit behind later ones (zero on Redis):
    /// the reader re-reads that stretch on every pass.
    audit_settle: Duration,
    /// Deliveries this instance queued lately (only while re-reading an unsettled audit), so
    /// that a re-read costs no Redis call per event already queued.
    recently_queued: Mutex<RecentIds>,
    /// Per tenant, where its "expiring soon" scan starts: the page after the approvals already
    /// queued (absent: from the oldest pending).
    expiring_from: Mutex<HashMap<TenantId, String>>,
    /// "Expiring soon" warnings this instance queued, until their approval expires: the scan
    /// reads the due approvals before its resume point again on every pass, and queued each one
    /// again (a no-op in Redis, but a round trip per approval and webhook, every pass, for
    /// every tenant behind it).
    warned: Mutex<RecentIds>,
    /// Per tenant with webhooks, where this instance's reading of it stands.
    read_at: Mutex<HashMap<TenantId, ReadMark>>,
}

/// When a tenant's audit was last read (or, if never, when this instance first met it), how
/// far behind it was then, and whether this instance held its reader lock: while its reads
/// fail, its lag figure grows from there, so that a reader stuck on one tenant shows as behind
/// instead of frozen (or, for one already behind, dropping to the seconds since).
#[derive(Debug, Clone, Copy)]
struct ReadMark {
    at: std::time::Instant,
    behind: Duration,
    /// Another instance reads a tenant whose lock this one did not get: a failure here (this
    /// instance cut off from Redis) says nothing of that tenant, and its figure stays 0.
    /// Every webhook tenant's lag grew on an instance cut off alone, and under the alert's
    /// `max` outweighed the instance actually reading it.
    held: bool,
}

/// A webhook's address and events, checked (`check`) before the caller's permission, as the
/// contract orders a request's checks: body (400) before authorization (403).
pub struct NewWebhookRequest {
    url: String,
    parsed: reqwest::Url,
    events: Vec<NotifyEvent>,
}

impl NewWebhookRequest {
    pub fn check(url: String, events: Option<Vec<NotifyEvent>>) -> Result<Self, AppError> {
        // Characters, as documented (a byte count refused shorter non-ASCII URLs).
        if url.chars().count() > MAX_URL {
            return Err(AppError::InvalidContent(format!(
                "url: at most {MAX_URL} characters"
            )));
        }
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| AppError::InvalidContent(format!("url: not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(AppError::InvalidContent(
                "url: an http:// or https:// URL with a host".into(),
            ));
        }
        let mut events = events.unwrap_or_else(|| NotifyEvent::ALL.to_vec());
        events.sort_by_key(|e| e.as_str());
        events.dedup();
        if events.is_empty() {
            return Err(AppError::InvalidContent(
                "events: name at least one of parked, decided, expired, expiring_soon".into(),
            ));
        }
        Ok(Self {
            url,
            parsed,
            events,
        })
    }
}

impl Notifier {
    pub fn new(
        store: Store,
        app: Arc<Approvals>,
        settings: NotificationSettings,
        inbox_base: Option<String>,
    ) -> Self {
        let audit_settle = app.audit_settle_time();
        let proxy_host = settings
            .proxy
            .as_deref()
            .and_then(|p| reqwest::Url::parse(p).ok())
            .and_then(|u| u.host_str().map(str::to_owned));
        let egress = Arc::new(
            EgressPolicy::new(settings.allowed_networks.clone()).trusting_proxy(proxy_host),
        );
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .dns_resolver(egress.resolver())
            // A proxy from the environment would resolve and connect instead of us, past the
            // egress guard: only the one the operator names for webhooks is used.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("approvals-webhooks/", env!("CARGO_PKG_VERSION")));
        // Checked when the configuration was read.
        if let Some(proxy) = settings
            .proxy
            .as_deref()
            .and_then(|p| reqwest::Proxy::all(p).ok())
        {
            builder = builder.proxy(proxy);
        }
        // Start-up. A default client instead would have no deadline, follow redirects, use an
        // environment proxy and skip the egress guard: better not to start.
        let http = builder
            .build()
            .expect("the webhook HTTP client (TLS, guarded resolver) cannot be built");
        Self {
            store,
            app,
            settings,
            inbox_base: inbox_base.map(|b| b.trim_end_matches('/').to_owned()),
            http,
            egress,
            instance: uuid::Uuid::new_v4().to_string(),
            audit_settle,
            recently_queued: Mutex::default(),
            expiring_from: Mutex::default(),
            warned: Mutex::default(),
            read_at: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn max_webhooks_per_tenant(&self) -> usize {
        self.settings.max_webhooks_per_tenant
    }

    /// Runs the reader and sender loops until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let reader = {
            let this = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move { this.read_loop(stop).await })
        };
        self.send_loop(stop).await;
        let _ = reader.await;
    }

    async fn read_loop(&self, stop: CancellationToken) {
        let mut failures = approvals_core::RepeatedFailure::default();
        loop {
            let (behind, failure) = self.read_pass(&stop).await;
            let result = failure.map_or(Ok(()), Err);
            let log = if result.is_err() {
                failures.failed()
            } else {
                failures.succeeded()
            };
            match (&result, log) {
                (Err(error), approvals_core::FailureLog::Started) => {
                    tracing::warn!(%error, "webhook reader failing; retrying (logged again once a minute)")
                }
                (Err(error), approvals_core::FailureLog::StillFailing { failures }) => {
                    tracing::warn!(%error, failures, "webhook reader still failing")
                }
                (Ok(()), approvals_core::FailureLog::Recovered { failures }) => {
                    tracing::info!(failures, "webhook reader works again")
                }
                _ => {}
            }
            // A tenant left behind (its events come faster than a pass reads them) is read
            // again at once, not a poll interval later, whatever happened to other tenants:
            // one tenant failing every pass must not slow another's catching up.
            let pause = if behind {
                Duration::ZERO
            } else {
                self.settings.poll_interval
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Another instance takes these tenants over at its next pass, not after the lease.
        let released = tokio::time::timeout(
            Duration::from_secs(2),
            self.store.unlock_all(&self.instance),
        )
        .await;
        if !matches!(released, Ok(Ok(_))) {
            tracing::info!("webhook reader locks not released; they run out with their lease");
        }
    }

    /// One pass over every tenant with webhooks whose reader lock this instance holds. A
    /// tenant that fails (its audit unreadable, a timeout) is retried next pass and does not
    /// hold up the tenants after it. Answers whether some tenant has more to read than one
    /// pass reads, and the pass's first failure.
    async fn read_pass(&self, stop: &CancellationToken) -> (bool, Option<BoxError>) {
        let mut first_failure = None;
        let mut behind = false;
        let tenants = match self.store.tenants().await {
            Ok(tenants) => tenants,
            Err(error) => {
                // No tenant is read: each one known falls behind.
                let known: Vec<TenantId> = self.lock_read_at().keys().cloned().collect();
                for tenant in &known {
                    self.not_read(tenant);
                }
                return (false, Some(error.into()));
            }
        };
        let mut listed = std::collections::HashSet::with_capacity(tenants.len());
        for tenant in tenants {
            if stop.is_cancelled() {
                break;
            }
            let Ok(tenant_id) = TenantId::parse(tenant.as_str()) else {
                continue;
            };
            match self.read_one(&tenant, &tenant_id).await {
                Ok((more, warnings)) => {
                    behind |= more;
                    self.met(&tenant_id, |mark| mark.at = std::time::Instant::now());
                    if let Err(error) = warnings {
                        first_failure.get_or_insert_with(|| {
                            format!(
                                "tenant {tenant}: expiring-soon warnings: {}",
                                crate::app::chain(error.as_ref())
                            )
                            .into()
                        });
                    }
                }
                Err(error) => {
                    tracing::debug!(%tenant, %error, "webhook reader: tenant not read this pass");
                    self.not_read(&tenant_id);
                    // What the engine said, for the log line: the error's own text is only
                    // what a client would be told ("the approval store is unavailable").
                    first_failure.get_or_insert_with(|| {
                        format!("tenant {tenant}: {}", crate::app::chain(error.as_ref())).into()
                    });
                }
            }
            listed.insert(tenant_id);
        }
        if !stop.is_cancelled() {
            self.lock_read_at()
                .retain(|tenant, _| listed.contains(tenant));
        }
        (behind, first_failure)
    }

    /// A tenant this pass could not read: behind by what it was at its last read, and by the
    /// time since, if this instance was its reader.
    fn not_read(&self, tenant: &TenantId) {
        let mark = self.met(tenant, |mark| *mark);
        if mark.held {
            crate::metrics::notifications_reader_lag(tenant, mark.behind + mark.at.elapsed());
        }
    }

    /// Publishes how far behind `tenant`'s audit the reader is, and keeps it for
    /// [`Self::not_read`].
    fn reader_lag(&self, tenant: &TenantId, behind: Duration) {
        self.met(tenant, |mark| mark.behind = behind);
        crate::metrics::notifications_reader_lag(tenant, behind);
    }

    /// `f` on `tenant`'s entry in `read_at`, made (and its counters introduced) the first
    /// time the reader meets it.
    fn met<R>(&self, tenant: &TenantId, f: impl FnOnce(&mut ReadMark) -> R) -> R {
        let mut read_at = self.lock_read_at();
        let entry = read_at.entry(tenant.clone()).or_insert_with(|| {
            crate::metrics::notifications_introduced(tenant);
            ReadMark {
                at: std::time::Instant::now(),
                behind: Duration::ZERO,
                held: false,
            }
        });
        f(entry)
    }

    /// Reads one tenant's new events; `true` if more are left than this pass read, and how
    /// queueing its expiring-soon warnings went. Those come from another read (the pending
    /// approvals): one that fails leaves the audit read, and its lag, as they are (it was
    /// reported as the reader falling behind, and a busy tenant's "more to read" was lost).
    async fn read_one(
        &self,
        tenant: &str,
        tenant_id: &TenantId,
    ) -> Result<(bool, Result<(), BoxError>), BoxError> {
        let lease = self.settings.poll_interval * 10 + Duration::from_secs(5);
        // Not read here (another instance holds it, or it has no webhook left): this
        // instance's lag figure for it must not stay behind, stale, under the alert's max.
        let held = self.store.lock(tenant, &self.instance, lease).await?;
        self.met(tenant_id, |mark| mark.held = held);
        if !held {
            self.reader_lag(tenant_id, Duration::ZERO);
            return Ok((false, Ok(())));
        }
        let hooks = self.store.webhooks(tenant_id).await?;
        if hooks.is_empty() {
            self.reader_lag(tenant_id, Duration::ZERO);
            self.store.forget_tenant(tenant).await?;
            return Ok((false, Ok(())));
        }
        let behind = self.read_tenant(tenant_id, &hooks).await?;
        let mut warnings = Ok(());
        if hooks
            .iter()
            .any(|h| h.events.contains(&NotifyEvent::ExpiringSoon))
        {
            warnings = self.queue_expiring_soon(tenant_id, &hooks).await;
        }
        Ok((behind, warnings))
    }

    /// Queues a delivery for each new audit event each webhook subscribes to, then moves the
    /// cursor: a crash in between queues the same deliveries again, which `enqueue` drops.
    /// Reads `notifications.read_batch` events for [`READ_BUDGET`] at most; `true` if events
    /// were left for the next pass.
    async fn read_tenant(&self, tenant: &TenantId, hooks: &[Webhook]) -> Result<bool, BoxError> {
        if !self.audit_settle.is_zero() {
            return self.read_unsettled_tenant(tenant, hooks).await;
        }
        let until = std::time::Instant::now() + READ_BUDGET;
        let mut hooks = std::borrow::Cow::Borrowed(hooks);
        let mut read = 0;
        loop {
            let cursor = self.cursor(tenant).await?;
            let (after, since) = match &cursor {
                Cursor::After(id) => (Some(id.as_str()), None),
                Cursor::Since(_) | Cursor::Sweep { .. } => (None, Some(cursor.instant())),
            };
            let page = self
                .app
                .read_audit_for_service(tenant, after, since, self.page_size())
                .await?;
            if read == 0 && !page.items.is_empty() {
                if let Cursor::After(seen) = &cursor {
                    self.check_for_gap(tenant, seen).await?;
                }
            }
            // A page of entries the engine passed over (unreadable) is empty but goes on.
            let last = match (page.items.last(), &page.next_cursor) {
                (Some(event), _) => event.event_id.clone(),
                (None, Some(next)) => next.clone(),
                (None, None) => return Ok(false),
            };
            if read > 0 {
                // A webhook added since the pass began hears of this page's events too.
                hooks = std::borrow::Cow::Owned(self.store.webhooks(tenant).await?);
            }
            for event in &page.items {
                self.queue_event(&hooks, event).await?;
            }
            read += page.items.len().max(1);
            let cursor = Cursor::After(last);
            self.store
                .set_cursor(tenant.as_str(), &cursor.render())
                .await?;
            if page.next_cursor.is_none() {
                self.reader_lag(tenant, Duration::ZERO);
                return Ok(false);
            }
            if read >= self.settings.read_batch || std::time::Instant::now() >= until {
                // Behind by the age of the oldest event not read yet (about that of the last
                // one read): what the audit's cap and retention must stay well above.
                self.reader_lag(tenant, cursor.instant().elapsed_at(Timestamp::now()));
                return Ok(true);
            }
        }
    }

    /// Whether events after `seen`, the cursor, were trimmed from the audit before the reader
    /// reached them (the stream's length cap or its retention): then the oldest event left is
    /// newer than the cursor, and the next read quietly goes on from it. Those events' webhooks
    /// are never sent; the gap is counted and logged so that on-call staff learn of it.
    /// Only Redis' audit ids are ordered this way; another engine's (Temporal's) are skipped.
    ///
    /// Not when the cursor's own event has passed the audit's retention: a quiet tenant's
    /// whole audit, the cursor's event with it, was trimmed, and the next event raised a false
    /// alarm. Whether anything came between them cannot be told then (Redis marks no trim),
    /// but a reader that missed events for the whole retention was behind for days, which the
    /// reader's lag had long reported.
    async fn check_for_gap(&self, tenant: &TenantId, seen: &str) -> Result<(), BoxError> {
        let Some(seen_at) = stream_position(seen) else {
            return Ok(());
        };
        let horizon = Timestamp::now().minus(self.app.audit_retention());
        if i64::try_from(seen_at.0).unwrap_or(i64::MAX) < horizon.as_millis() {
            tracing::debug!(%tenant, cursor = seen, "webhook reader: its cursor passed the audit's retention");
            return Ok(());
        }
        let oldest = self
            .app
            .read_audit_for_service(tenant, None, None, 1)
            .await?;
        let oldest = oldest
            .items
            .first()
            .map(|event| event.event_id.as_str())
            .or(oldest.next_cursor.as_deref());
        if let Some(oldest) = oldest.filter(|id| stream_position(id) > Some(seen_at)) {
            crate::metrics::notifications_audit_gap(tenant);
            tracing::error!(
                %tenant,
                cursor = seen,
                oldest,
                "webhook reader fell behind the audit's length cap or retention: events after \
                 its cursor may have been trimmed unread, and their webhooks are not sent \
                 (the tenant's audit export shows what is left)"
            );
        }
        Ok(())
    }

    /// [`Self::read_tenant`] for an engine whose audit settles late (Temporal): an event may
    /// appear up to `audit_settle` after its timestamp, behind events already read, so each
    /// sweep reads again from the newest timestamp read minus that. What was queued before is
    /// skipped here (or dropped by `enqueue`). A sweep longer than a pass reads goes on at the
    /// next pass where this one stopped (`true`: at once); once it reaches the end, the cursor
    /// is the newest timestamp it read.
    async fn read_unsettled_tenant(
        &self,
        tenant: &TenantId,
        hooks: &[Webhook],
    ) -> Result<bool, BoxError> {
        let (since, mut newest, mut after) = match self.cursor(tenant).await? {
            Cursor::Sweep {
                from,
                newest,
                after,
            } => (from, newest, Some(after)),
            stored => {
                let at = stored.instant();
                (at.minus(self.audit_settle), at, None)
            }
        };
        let mut hooks = std::borrow::Cow::Borrowed(hooks);
        let mut read = 0;
        let cursor = loop {
            let page = self
                .app
                .read_audit_for_service(tenant, after.as_deref(), Some(since), self.page_size())
                .await?;
            if read > 0 {
                hooks = std::borrow::Cow::Owned(self.store.webhooks(tenant).await?);
            }
            for event in &page.items {
                newest = newest.max(event.timestamp);
                self.queue_event(&hooks, event).await?;
            }
            read += page.items.len().max(1);
            match page.next_cursor {
                None => break Cursor::Since(newest),
                Some(next) if read >= self.settings.read_batch => {
                    break Cursor::Sweep {
                        from: since,
                        newest,
                        after: next,
                    }
                }
                Some(next) => after = Some(next),
            }
        };
        self.lock_recent().prune(since.minus(self.audit_settle));
        self.store
            .set_cursor(tenant.as_str(), &cursor.render())
            .await?;
        let behind = matches!(cursor, Cursor::Sweep { .. });
        let lag = if behind {
            newest.elapsed_at(Timestamp::now())
        } else {
            Duration::ZERO
        };
        self.reader_lag(tenant, lag);
        Ok(behind)
    }

    async fn cursor(&self, tenant: &TenantId) -> Result<Cursor, store::StoreError> {
        let stored = self.store.cursor(tenant.as_str(), Timestamp::now()).await?;
        Ok(Cursor::parse(&stored))
    }

    /// Audit events per read: a page, or the whole batch when that is smaller.
    fn page_size(&self) -> usize {
        self.settings.read_batch.clamp(1, 100)
    }

    fn lock_expiring_from(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, String>> {
        // A map of cursors holds no invariant a panicking holder could break.
        self.expiring_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_read_at(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, ReadMark>> {
        // Instants by tenant hold no invariant a panicking holder could break.
        self.read_at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_warned(&self) -> std::sync::MutexGuard<'_, RecentIds> {
        // A set of ids holds no invariant a panicking holder could break.
        self.warned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, RecentIds> {
        // A set of ids holds no invariant a panicking holder could break.
        self.recently_queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a delivery of `event` for each webhook subscribed to its kind.
    async fn queue_event(
        &self,
        hooks: &[Webhook],
        event: &AuditEvent,
    ) -> Result<(), store::StoreError> {
        let Some(kind) = LiveKind::of(event) else {
            return Ok(());
        };
        let kind = NotifyEvent::of(kind);
        // A webhook hears of what happened from its creation on.
        let subscribed = hooks
            .iter()
            .filter(|h| h.events.contains(&kind) && event.timestamp >= h.created_at);
        let remember = !self.audit_settle.is_zero();
        for hook in subscribed {
            let id = format!("{}:{}", hook.id, event.event_id);
            let key = delivery_id(hook, &id);
            if remember && self.lock_recent().contains(&key) {
                continue;
            }
            let body = payload::event_body(hook, kind, event, self.inbox_base.as_deref());
            // "Something waits" is not sent once nothing does.
            let unless_settled =
                (kind == NotifyEvent::Parked).then(|| event.approval_id.to_string());
            self.queue(hook, &id, body, None, unless_settled).await?;
            if remember {
                self.lock_recent().insert(event.timestamp, key);
            }
        }
        Ok(())
    }

    /// Queues "expiring soon" once per pending approval in the last share of its TTL. Oldest
    /// first: an approval not yet due ends the scan when its TTL is no longer than the
    /// tenant's (every one after it was parked later, with that TTL: none is due before it).
    /// One parked with a longer TTL (before the tenant's was lowered, or imported) does not,
    /// or the approvals parked since would go unwarned until it is due. The next pass starts
    /// again at the first page that held one not yet due (`expiring_from`), so a burst of more
    /// approvals than a page holds is reached in time too.
    async fn queue_expiring_soon(
        &self,
        tenant: &TenantId,
        hooks: &[Webhook],
    ) -> Result<(), BoxError> {
        let now = Timestamp::now();
        let share = self.settings.expiring_soon_share;
        let tenant_ttl = self.app.ttl_for(tenant);
        let mut page_from = self.lock_expiring_from().get(tenant).cloned();
        self.lock_warned().prune(now);
        // Where the first approval not yet due was: the next pass starts there.
        let mut resume_at: Option<Option<String>> = None;
        // Bounded like the audit read: the tenants after this one in the pass wait for it.
        let (budget_ends, mut queue_calls) = (std::time::Instant::now() + EXPIRING_BUDGET, 0);
        'pages: for _ in 0..EXPIRING_PAGES_PER_PASS {
            let page = self
                .app
                .list_for_service(tenant, Status::Pending, page_from.as_deref(), EXPIRING_PAGE)
                .await?;
            let mut ends_the_scan = false;
            for approval in page.items {
                let ttl = approval.submitted_at.elapsed_at(approval.expires_at);
                let left = now.elapsed_at(approval.expires_at);
                if left.as_secs_f64() > ttl.as_secs_f64() * share {
                    resume_at.get_or_insert_with(|| page_from.clone());
                    if ttl <= tenant_ttl {
                        ends_the_scan = true;
                        break;
                    }
                    continue;
                }
                if left.is_zero() {
                    continue;
                }
                for hook in hooks
                    .iter()
                    .filter(|h| h.events.contains(&NotifyEvent::ExpiringSoon))
                {
                    let id = format!("{}:soon:{}", hook.id, approval.id);
                    let known = delivery_id(hook, &id);
                    if self.lock_warned().contains(&known) {
                        continue;
                    }
                    // At least one per pass: a page read slower than the budget (Redis under
                    // strain) must not leave every pass with nothing queued.
                    if queue_calls >= EXPIRING_QUEUED_PER_PASS
                        || (queue_calls > 0 && std::time::Instant::now() >= budget_ends)
                    {
                        // The rest next pass, from this page (what was queued is remembered).
                        resume_at.get_or_insert_with(|| page_from.clone());
                        break 'pages;
                    }
                    queue_calls += 1;
                    let body =
                        payload::expiring_body(hook, &approval, left, self.inbox_base.as_deref());
                    // Remembered as sent until the approval expires: a tombstone gone sooner
                    // would let a later pass (or another instance) send it again.
                    self.queue(hook, &id, body, Some(&approval), None).await?;
                    self.lock_warned().insert(approval.expires_at, known);
                }
            }
            match page.next_cursor {
                Some(next) if !ends_the_scan => page_from = Some(next),
                _ => break,
            }
        }
        let resume_at = resume_at.unwrap_or(page_from);
        let mut expiring_from = self.lock_expiring_from();
        match resume_at {
            Some(from) => expiring_from.insert(tenant.clone(), from),
            None => expiring_from.remove(tenant),
        };
        Ok(())
    }

    /// Queues `body` for `hook` once: a second call with the same `id` does nothing while the
    /// first is queued or remembered as sent (a day; a warning that `expiring` expires soon
    /// until it expires, if later).
    async fn queue(
        &self,
        hook: &Webhook,
        id: &str,
        body: String,
        expiring: Option<&Approval>,
        unless_settled: Option<String>,
    ) -> Result<(), store::StoreError> {
        let delivery = Delivery {
            id: delivery_id(hook, id),
            tenant: hook.tenant.clone(),
            webhook_id: hook.id.clone(),
            body,
            attempts: 0,
            last_error: None,
            remember_until: expiring.map(|a| a.expires_at),
            while_pending: expiring.map(|a| a.id.to_string()),
            unless_settled,
            round: 0,
        };
        match self
            .store
            .enqueue(
                &delivery,
                store::QueueCaps {
                    per_tenant: self.settings.max_queued_per_tenant,
                    per_webhook: self.settings.max_queued_per_webhook,
                },
            )
            .await?
        {
            store::Enqueued::Queued => {
                metrics::counter!("approvals_notifications_queued_total", "tenant" => hook.tenant.clone())
                    .increment(1);
            }
            store::Enqueued::Known => {}
            store::Enqueued::Full => {
                // Logged at debug only: a tenant whose receivers are down hits this for every
                // event; the dead-letter count and ApprovalsWebhooksFailing say it.
                tracing::debug!(tenant = %hook.tenant, webhook = %hook.id,
                    "webhook delivery not queued: the webhook's or the tenant's queue is full; \
                     kept as a dead letter");
                metrics::counter!("approvals_notifications_total",
                    "tenant" => hook.tenant.clone(), "outcome" => "dead")
                .increment(1);
            }
        }
        Ok(())
    }

    /// Keeps up to `send_concurrency` deliveries in hand, at most `per_webhook_concurrency` of
    /// them in flight to one webhook, and refills as soon as an attempt ends: one receiver that
    /// never answers holds its own few slots for its timeout while every other webhook's
    /// deliveries go on. What is claimed for a webhook that already has enough in flight is
    /// held here, as many as its cap, and started as its attempts end (sparing a fast
    /// webhook's backlog a Redis round trip per attempt); the rest goes back to the queue, due
    /// one after another at the pace the webhook takes them ([`Pacing`]), so the claims that
    /// follow reach other webhooks' deliveries behind it (held without bound, one backlog took
    /// every slot). A webhook none of whose attempts has ended for [`SLOW_RECEIVER`] gets
    /// nothing held: what is claimed for it goes back due a request timeout later, and nothing
    /// is held past its lease.
    async fn send_loop(&self, stop: CancellationToken) {
        // A delivery is leased for longer than an attempt can take.
        let lease = self.settings.request_timeout * 2 + Duration::from_secs(5);
        let mut in_flight = FuturesUnordered::new();
        let mut per_webhook: HashMap<WebhookKey, InFlight> = HashMap::new();
        // Attempts in flight per tenant (held ones take a slot their tenant already has, and
        // in flight and held together stay within its share).
        let mut per_tenant: HashMap<String, usize> = HashMap::new();
        let mut held = Held::default();
        let mut pacing = Pacing::default();
        let mut counted_at: Option<tokio::time::Instant> = None;
        loop {
            pacing.forget_idle();
            // Held for a webhook that stopped answering: back to the queue.
            let stalled = held.take_stalled(&per_webhook);
            self.put_back(stalled, self.settings.request_timeout).await;
            let room = self
                .settings
                .send_concurrency
                .saturating_sub(in_flight.len() + held.len());
            let mut claimed = false;
            if room > 0 && !stop.is_cancelled() {
                match self.store.claim(room, lease).await {
                    Ok(batch) if !batch.is_empty() => {
                        claimed = true;
                        let (mut soon, mut later) = (Vec::new(), Vec::new());
                        let mut asked_to_wait = Vec::new();
                        for delivery in batch {
                            let webhook = WebhookKey::of(&delivery);
                            if let Some(until) = pacing.held_back(&webhook) {
                                asked_to_wait.push((delivery.id, until));
                                continue;
                            }
                            let tenant_busy = per_tenant.get(&webhook.0).copied().unwrap_or(0);
                            let tenant_full = tenant_busy >= self.settings.per_tenant_concurrency;
                            if tenant_full && !per_webhook.contains_key(&webhook) {
                                // Nothing in flight to it to wait behind: back to the queue.
                                soon.push(delivery);
                                continue;
                            }
                            let busy = per_webhook.entry(webhook.clone()).or_insert(InFlight {
                                attempts: 0,
                                last_ended: tokio::time::Instant::now(),
                            });
                            if busy.attempts < self.settings.per_webhook_concurrency && !tenant_full
                            {
                                busy.attempts += 1;
                                *per_tenant.entry(webhook.0.clone()).or_default() += 1;
                                in_flight.push(self.attempt_for(delivery, webhook));
                            } else if busy.last_ended.elapsed() >= SLOW_RECEIVER {
                                pacing.silent_for(&webhook, busy.last_ended.elapsed());
                                later.push(delivery);
                            } else if held.count(&webhook) < self.settings.per_webhook_concurrency
                                // What a tenant holds counts against its share of the slots
                                // too: uncounted, a tenant with several busy webhooks held
                                // every slot, and other tenants waited behind its backlog.
                                && tenant_busy + held.for_tenant(&webhook.0)
                                    < self.settings.per_tenant_concurrency
                            {
                                held.push(webhook, delivery);
                            } else {
                                soon.push(delivery);
                            }
                        }
                        let soon = pacing.due(
                            soon,
                            self.settings.send_interval,
                            self.settings.per_webhook_concurrency,
                        );
                        // A receiver that stopped answering takes at most its concurrency
                        // per request timeout: its backlog comes due at that pace, not all
                        // at once a timeout later (then claimed and put back again and
                        // again, ahead of other tenants' newer deliveries).
                        let later = pacing.due(
                            later,
                            self.settings.request_timeout,
                            self.settings.per_webhook_concurrency,
                        );
                        self.defer(soon).await;
                        self.defer(asked_to_wait).await;
                        self.defer(later).await;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "webhook sender cannot reach Redis"),
                }
            }
            // Idle, or at least once a second while busy (every slot taken, or a backlog
            // claimed on every pass): exactly when the figure must not stand still.
            let stale = counted_at.is_none_or(|at| at.elapsed() >= PENDING_REFRESH);
            if (!claimed && room > 0) || stale {
                if let Ok(queued) = self.store.queued().await {
                    metrics::gauge!("approvals_notifications_pending").set(queued as f64);
                    counted_at = Some(tokio::time::Instant::now());
                }
            }
            if stop.is_cancelled() {
                // Held ones are due again at once, for another instance; the attempts in
                // flight end (within the request timeout) before the sender stops. A queue
                // that stays busy must not keep a stopping instance.
                self.put_back(held.take_all(), Duration::ZERO).await;
                if in_flight.is_empty() {
                    return;
                }
            }
            // More may be due: claim again at once while there is room; else wait for an
            // attempt to end, or the send interval.
            let wait = if claimed && room > 0 {
                Duration::ZERO
            } else {
                self.settings.send_interval
            };
            tokio::select! {
                Some((webhook, took, answered)) = in_flight.next() => {
                    if let Some(answered) = answered {
                        let streak = u32::try_from(self.settings.per_webhook_concurrency)
                            .unwrap_or(u32::MAX);
                        pacing.attempted(&webhook, took, answered, streak, |pauses| {
                            self.settings.retry_after(pauses).min(MAX_WEBHOOK_PAUSE)
                        });
                        // Past a lease from now nothing is leased: only deferred deliveries
                        // are pulled forward, never one in flight elsewhere.
                        let beyond = Timestamp::now().plus(lease);
                        let concurrency = self.settings.per_webhook_concurrency;
                        // Taken, not merely answered: a receiver refusing deliveries (a 404
                        // while it is redeployed, a revoked Slack hook) brought every backed-off
                        // retry forward to a lease, at each answer.
                        if let Some(step) = answered
                            .taken
                            .then(|| pacing.recovered(&webhook, took, concurrency, beyond))
                            .flatten()
                        {
                            let moved = self.pull_forward(&webhook, beyond, step).await;
                            pacing.pulled(&webhook, beyond, took, moved);
                        }
                    }
                    if let Some(until) = pacing.held_back(&webhook) {
                        // What is held for it waits with the rest, in the queue.
                        let waiting = held.take(&webhook);
                        self.defer(waiting.into_iter().map(|d| (d.id, until)).collect()).await;
                    }
                    if let Some(busy) = per_webhook.get_mut(&webhook) {
                        busy.last_ended = tokio::time::Instant::now();
                        match held.pop(&webhook) {
                            // Its slot goes to what is held for it.
                            Some(next) => in_flight.push(self.attempt_for(next, webhook)),
                            None => {
                                busy.attempts -= 1;
                                if busy.attempts == 0 {
                                    per_webhook.remove(&webhook);
                                }
                                if let Some(count) = per_tenant.get_mut(&webhook.0) {
                                    *count -= 1;
                                    if *count == 0 {
                                        per_tenant.remove(&webhook.0);
                                    }
                                }
                            }
                        }
                    }
                }
                () = stop.cancelled(), if in_flight.is_empty() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt, reporting which webhook's slot it frees, how long it took, and the pause
    /// its receiver asked for.
    async fn attempt_for(
        &self,
        delivery: Delivery,
        webhook: WebhookKey,
    ) -> (WebhookKey, Duration, Option<Answered>) {
        let started = tokio::time::Instant::now();
        let answered = self.attempt(delivery).await;
        (webhook, started.elapsed(), answered)
    }

    /// Claimed deliveries not attempted: due again after `after`, no attempt counted.
    async fn put_back(&self, deliveries: Vec<Delivery>, after: Duration) {
        let at = Timestamp::now().plus(after);
        self.defer(deliveries.into_iter().map(|d| (d.id, at)).collect())
            .await;
    }

    /// Claimed deliveries not attempted: each due again at its time, no attempt counted.
    /// The deliveries deferred for `webhook` past `beyond`, due from `beyond` on, `step`
    /// apart (its receiver is back: see [`Pacing::recovered`]).
    /// How many were moved; `None` when Redis did not answer.
    async fn pull_forward(
        &self,
        webhook: &WebhookKey,
        beyond: Timestamp,
        step: Duration,
    ) -> Option<u64> {
        match self
            .store
            .pull_forward(&webhook.0, &webhook.1, beyond, step)
            .await
        {
            Ok(0) => Some(0),
            Ok(moved) => {
                tracing::info!(tenant = %webhook.0, webhook = %webhook.1, moved,
                    "webhook receiver answers again: its deferred deliveries come due sooner");
                Some(moved)
            }
            // They come due as they were.
            Err(error) => {
                tracing::debug!(%error, "cannot bring deferred deliveries forward");
                None
            }
        }
    }

    async fn defer(&self, due: Vec<(String, Timestamp)>) {
        if let Err(error) = self.store.defer(due).await {
            // Their lease runs out and they are claimed again.
            tracing::debug!(%error, "cannot put deliveries back in the queue");
        }
    }

    /// One attempt at one delivery, and what follows from it: what its receiver's answer
    /// tells of it (`None`: nothing was sent, its webhook removed or unread, or the delivery
    /// withdrawn).
    async fn attempt(&self, mut delivery: Delivery) -> Option<Answered> {
        let hook = match self
            .store
            .webhook(&delivery.tenant, &delivery.webhook_id)
            .await
        {
            Ok(store::Lookup::Found(hook)) => hook,
            Ok(store::Lookup::Removed) => {
                // The webhook was removed: its deliveries go nowhere.
                let _ = self.store.delivered(&delivery).await;
                return None;
            }
            // Not knowing the webhook (Redis did not answer, or a version that cannot read it)
            // is not its removal: the lease runs out and another attempt follows.
            Ok(store::Lookup::Unreadable) => return None,
            Err(error) => {
                tracing::debug!(%error, id = %delivery.id, "cannot look up a webhook");
                return None;
            }
        };
        let withdrawn = if delivery.while_pending.is_some() {
            !self.still_pending(&hook, &mut delivery).await
        } else if let Some(id) = delivery.unless_settled.as_deref() {
            // Unread (the engine unreachable), it goes out as queued: better late than never.
            match self.read_approval(&delivery.tenant, id).await {
                Some(Ok(Some(approval))) => approval.status != Status::Pending,
                Some(Ok(None)) => true,
                Some(Err(_)) | None => false,
            }
        } else {
            false
        };
        if withdrawn {
            // Its approval was decided or expired first: nobody should be sent to it now.
            metrics::counter!("approvals_notifications_total", "tenant" => delivery.tenant.clone(), "outcome" => "withdrawn")
                .increment(1);
            if let Err(error) = self.store.delivered(&delivery).await {
                tracing::debug!(%error, "cannot record a withdrawn webhook delivery");
            }
            return None;
        }
        let (outcome, asked_to_wait, down, unanswered) = match self.post(&hook, &delivery).await {
            Ok(()) => (Ok(()), None, false, false),
            Err(Refused {
                error,
                retry_after,
                down,
                unanswered,
            }) => (
                Err(error),
                retry_after.map(|wait| wait.min(self.settings.retry_max)),
                down,
                unanswered,
            ),
        };
        let tenant = delivery.tenant.clone();
        delivery.attempts += 1;
        let taken = outcome.is_ok();
        let result = match outcome {
            Ok(()) => {
                metrics::counter!("approvals_notifications_total", "tenant" => tenant, "outcome" => "sent")
                    .increment(1);
                self.store.delivered(&delivery).await
            }
            Err(error) if delivery.attempts >= self.settings.max_attempts => {
                delivery.last_error = Some(error);
                let given_up = self.store.dead(&delivery).await;
                // Only a delivery this attempt gave up on counts as dead: one settled by
                // another instance meanwhile (sent, say) was merely a failed attempt here.
                let outcome = if matches!(given_up, Ok(true)) {
                    tracing::warn!(tenant = %delivery.tenant, webhook = %delivery.webhook_id,
                        id = %delivery.id, attempts = delivery.attempts,
                        error = delivery.last_error.as_deref().unwrap_or_default(),
                        "webhook delivery given up");
                    "dead"
                } else {
                    "failed"
                };
                metrics::counter!("approvals_notifications_total", "tenant" => tenant, "outcome" => outcome)
                    .increment(1);
                given_up.map(drop)
            }
            Err(error) => {
                tracing::debug!(tenant = %delivery.tenant, id = %delivery.id, %error, "webhook delivery failed; retrying");
                delivery.last_error = Some(error);
                metrics::counter!("approvals_notifications_total", "tenant" => tenant, "outcome" => "failed")
                    .increment(1);
                // A receiver that says when to come back (a rate-limited Slack webhook: 429
                // with Retry-After) is not tried sooner, up to `retry_max`.
                let wait = self
                    .backoff(delivery.attempts)
                    .max(asked_to_wait.unwrap_or_default());
                let next = Timestamp::now().plus(wait);
                self.store.retry_at(&delivery, next).await.map(drop)
            }
        };
        if let Err(error) = result {
            // The lease runs out and another attempt follows: at least once.
            tracing::debug!(%error, "cannot record a webhook attempt");
        }
        Some(Answered {
            down,
            asked: asked_to_wait,
            taken,
            unanswered,
        })
    }

    /// Whether the approval an "expiring soon" delivery warns about is still pending; if so
    /// its body is rendered again with the time left now. When the approval cannot be read
    /// (the engine is unreachable), the warning goes out as it was queued: better a warning
    /// that may be late than none.
    async fn still_pending(&self, hook: &Webhook, delivery: &mut Delivery) -> bool {
        let Some(id) = delivery.while_pending.as_deref() else {
            return true;
        };
        match self.read_approval(&delivery.tenant, id).await {
            Some(Ok(Some(approval))) if approval.status == Status::Pending => {
                let left = Timestamp::now().elapsed_at(approval.expires_at);
                delivery.body =
                    payload::expiring_body(hook, &approval, left, self.inbox_base.as_deref());
                !left.is_zero()
            }
            Some(Ok(_)) => false,
            Some(Err(_)) | None => true,
        }
    }

    /// The approval a delivery is about, as of now; `None` when it could not be read in time
    /// or its names do not parse (logged: the caller sends the delivery as queued).
    async fn read_approval(
        &self,
        tenant: &str,
        id: &str,
    ) -> Option<Result<Option<Approval>, crate::app::AppError>> {
        let (Ok(tenant), Ok(id)) = (TenantId::parse(tenant), ApprovalId::parse(id)) else {
            return None;
        };
        // Within half the POST's own timeout: with the webhook's lookup and the POST, the
        // attempt stays inside its lease (2 × request_timeout + 5 s). A Temporal read may
        // take its whole call_timeout (15 s), and a lease that ran out mid-attempt let a
        // second instance send the same delivery.
        let read = tokio::time::timeout(
            self.settings.request_timeout / 2,
            self.app.get_for_service(&tenant, &id),
        );
        match read.await {
            Ok(Ok(found)) => Some(Ok(found)),
            Ok(Err(error)) => {
                tracing::debug!(%error, %tenant, %id, "cannot read the approval a webhook delivery is about; sending it as queued");
                Some(Err(error))
            }
            Err(_) => {
                tracing::debug!(%tenant, %id, "the approval a webhook delivery is about was not read in time; sending it as queued");
                None
            }
        }
    }

    /// [`NotificationSettings::retry_after`] with ±25% jitter, so that a receiver that comes
    /// back is not hit by every retry at once.
    fn backoff(&self, attempts: u32) -> Duration {
        self.settings
            .retry_after(attempts)
            .mul_f64(rand::rng().random_range(JITTER))
    }

    async fn post(&self, hook: &Webhook, delivery: &Delivery) -> Result<(), Refused> {
        // The resolver guards names; an address in the URL is never resolved.
        self.egress
            .check_literal_host(&hook.url)
            .map_err(Refused::from)?;
        let timestamp = Timestamp::now().as_millis() / 1000;
        let signature = payload::signature(&hook.secret, timestamp, &delivery.body);
        let response = self
            .http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-approvals-event-id", &delivery.id)
            .header("x-approvals-timestamp", timestamp.to_string())
            .header("x-approvals-signature", format!("v1={signature}"))
            .body(delivery.body.clone())
            .send()
            .await
            // With its causes (reqwest's own message only says that sending failed), without
            // the URL (a Slack webhook's URL is its credential; this is logged and kept).
            .map_err(|e| {
                Refused::from(format!(
                    "POST failed: {}",
                    crate::app::chain(&e.without_url())
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Refused {
                error: format!("the receiver answered {status}"),
                retry_after: retry_after(response.headers()),
                down: status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT,
                unanswered: false,
            })
        }
    }
}

/// A failed attempt: why, when the receiver asked to be tried again (if it did), and whether
/// it takes no deliveries at all (see [`Answered::down`]).
struct Refused {
    error: String,
    retry_after: Option<Duration>,
    down: bool,
    /// No answer at all (see [`Answered::unanswered`]).
    unanswered: bool,
}

/// No answer: the receiver could not be reached (or may not be).
impl From<String> for Refused {
    fn from(error: String) -> Self {
        Self {
            error,
            retry_after: None,
            down: true,
            unanswered: true,
        }
    }
}

/// `Retry-After` (RFC 9110): seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The id of `hook`'s delivery `id` (`<tenant>:<webhook id>:<event>`): what the store keys it
/// by, and what this instance remembers it as.
fn delivery_id(hook: &Webhook, id: &str) -> String {
    format!("{}:{id}", hook.tenant)
}

/// A Redis stream id (`<ms>-<seq>`) as a comparable pair; `None` for another engine's ids.
fn stream_position(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// How often the sender refreshes `approvals_notifications_pending` while it is busy.
const PENDING_REFRESH: Duration = Duration::from_secs(1);

/// How long one reader pass reads one tenant's audit at most: long enough that a busy tenant
/// is not capped at a few pages per poll interval, short enough that the tenants after it in
/// the pass are not kept waiting.
const READ_BUDGET: Duration = Duration::from_secs(2);

/// Pending approvals per page of the "expiring soon" scan, and pages per pass and tenant at
/// most (a larger burst is reached over the next passes, one `poll_interval` apart).
const EXPIRING_PAGE: usize = 200;
const EXPIRING_PAGES_PER_PASS: usize = 10;
/// Warnings queued per pass and tenant at most, and the time one tenant's scan may take: a
/// burst of thousands due at once, times up to 10 webhooks, was tens of thousands of Redis
/// calls in one pass, while every tenant after it waited for its notifications.
const EXPIRING_QUEUED_PER_PASS: usize = 500;
const EXPIRING_BUDGET: Duration = Duration::from_secs(1);

/// The longest webhook URL accepted.
const MAX_URL: usize = 2_048;

fn store_failed(error: store::StoreError) -> AppError {
    AppError::Unavailable(approvals_core::BackendError::unavailable("webhooks", error))
}

/// The tenant admins' use cases: add, list and remove webhooks.
impl Notifier {
    pub(crate) fn authorize(caller: &Principal, tenant: &TenantId) -> Result<(), AppError> {
        if caller.may(Permission::ManageWebhooks, tenant) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "{} ({}) may not manage the webhooks of tenant {tenant}",
                caller.subject,
                caller.role.as_str()
            )))
        }
    }

    /// Adds a webhook; the answer holds its signing secret, which is never shown again.
    pub async fn add_webhook(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        asked: NewWebhookRequest,
        format: WebhookFormat,
    ) -> Result<Webhook, AppError> {
        Self::authorize(caller, tenant)?;
        let NewWebhookRequest {
            url,
            parsed,
            events,
        } = asked;
        let too_many = || AppError::TooManyWebhooks {
            tenant: tenant.clone(),
            max: self.settings.max_webhooks_per_tenant,
        };
        // Before the name is resolved: a tenant at its cap costs no DNS lookup (one on the
        // blocking pool, which a resolver that never answers holds for its own timeout).
        if self.store.count(tenant).await.map_err(store_failed)?
            >= self.settings.max_webhooks_per_tenant
        {
            return Err(too_many());
        }
        self.egress
            .check_url(&parsed)
            .await
            .map_err(AppError::WebhookDestinationForbidden)?;
        let mut secret = [0u8; 32];
        rand::rng().fill(&mut secret);
        let hook = Webhook {
            id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            tenant: tenant.to_string(),
            url,
            events,
            format,
            secret: format!("whsec_{}", hex::encode(secret)),
            created_at: Timestamp::now(),
        };
        // The cap again, with the write: concurrent adds cannot pass it together.
        if !self
            .store
            .add(&hook, self.settings.max_webhooks_per_tenant)
            .await
            .map_err(store_failed)?
        {
            return Err(too_many());
        }
        tracing::info!(%tenant, id = %hook.id, by = %caller.subject, "webhook added");
        Ok(hook)
    }

    /// The tenant's webhooks (secrets included: the caller hides them) and its dead letters.
    pub async fn webhooks(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<(Vec<Webhook>, u64), AppError> {
        Self::authorize(caller, tenant)?;
        let hooks = self.store.webhooks(tenant).await.map_err(store_failed)?;
        let dead = self
            .store
            .dead_letters(tenant)
            .await
            .map_err(store_failed)?;
        Ok((hooks, dead))
    }

    /// Queues the tenant's dead letters again (after a receiver outage): each is attempted
    /// anew, up to `notifications.max_attempts` times. How many were queued.
    pub async fn redeliver_dead_letters(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<u64, AppError> {
        Self::authorize(caller, tenant)?;
        let queued = self
            .store
            .redeliver_dead(tenant)
            .await
            .map_err(store_failed)?;
        tracing::info!(%tenant, queued, by = %caller.subject, "dead letters queued again");
        Ok(queued)
    }

    pub async fn remove_webhook(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(), AppError> {
        Self::authorize(caller, tenant)?;
        if self.store.remove(tenant, id).await.map_err(store_failed)? {
            tracing::info!(%tenant, id, by = %caller.subject, "webhook removed");
            Ok(())
        } else {
            Err(AppError::WebhookNotFound {
                tenant: tenant.clone(),
                id: id.chars().take(64).collect(),
            })
        }
    }
}
