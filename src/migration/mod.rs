//! `approvals migrate`: carries approvals from one engine to another through the engine
//! contract alone (`RecordTransfer`: `scan` on the source; `import`, `get`, `decide` and `scan`
//! on the target), so it knows neither Redis nor Temporal. ADR-0007 records the design.
//!
//! Two passes. **Copy** imports every scanned record; `import` is idempotent per id, so a run
//! killed anywhere and started again ends with every approval exactly once (a copy imported
//! pending is checked against its source at once, for a decision made since the scan).
//! **Reconcile** reads
//! the source again and compares each record with the target's copy: a decision made in the
//! source after its approval was copied (the migration races live reviewers) is replayed on
//! the target with its original reviewer and time; whatever still differs is reported by id,
//! and so is every record either side could not read (a run that passed one over is not
//! reconciled). A record whose calls keep failing after their retries is reported with the
//! error and passed over, so one bad record does not stop a million; past
//! [`MAX_FAILED_RECORDS`] the run stops early, since a side is then most likely down.

mod report;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use approvals_core::{
    Approval, ApprovalId, BackendError, DecisionOutcome, ImportOutcome, RecordTransfer, Status,
    TenantId, Timestamp,
};
use futures_util::{stream, FutureExt, TryStreamExt};
use indicatif::ProgressBar;

pub use report::{Difference, FailedRecord, Report, MAX_FAILED_RECORDS};

/// Records per `scan` call (Temporal's largest visibility page).
const SCAN_BATCH: usize = 1000;
/// How long a scan is tried again while its side does not answer, before the run stops (it
/// can be re-run: it is idempotent). A Redis failover or a rolling restart of Temporal's
/// frontend takes tens of seconds: four attempts within 1.2 s ended runs of hours on them.
const SCAN_RETRYING: Retrying = Retrying {
    refused_for: Duration::from_secs(30),
    timeouts: usize::MAX,
};
/// The same for a call about one record. A refused call (its side restarting) is tried for as
/// long as a scan: in 1.5 s, a side down for a few seconds failed every record in flight, and
/// 100 of them stopped a run of hours. One that ran out its deadline (a whole call deadline
/// spent: 15 s on Temporal) is tried once more, so an answer lost once is still had; a record
/// that keeps failing is passed over and reported (a re-run mends it).
const RECORD_RETRYING: Retrying = Retrying {
    refused_for: Duration::from_secs(30),
    timeouts: 1,
};

/// How a call that its side did not answer is tried again.
#[derive(Debug, Clone, Copy)]
struct Retrying {
    /// Tried again while the next attempt would start within this of the first.
    refused_for: Duration,
    /// Of the calls that ran out their deadline, how many are tried again (within
    /// `refused_for`, the first one in any case).
    timeouts: usize,
}
/// The longest pause between two attempts.
const MOST_BACKOFF: Duration = Duration::from_secs(5);

/// What to migrate, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Only these tenants; every tenant when empty.
    pub tenants: BTreeSet<TenantId>,
    /// Records in flight at once.
    pub concurrency: usize,
    /// Read both sides and report; write nothing.
    pub dry_run: bool,
    /// The target is the engine that answers (a dual soak's primary, after a switch or a
    /// rollback): a decision only it holds is one the source, its secondary, missed, and is
    /// replayed on the source. Otherwise the source answers, and its records are the truth.
    pub target_answers: bool,
}

pub struct Migration {
    source: Arc<dyn RecordTransfer>,
    target: Arc<dyn RecordTransfer>,
    plan: Plan,
    progress: ProgressBar,
}

/// What the copy pass did with one record.
enum Copied {
    Imported,
    /// Imported pending, and decided in the source meanwhile: the decision replayed at once.
    ImportedAndReplayed,
    AlreadyPresent,
    /// Its copy was there pending, and the source decided: the decision replayed at once.
    AlreadyPresentAndReplayed,
    WouldImport,
    /// The target would already have dropped it: not written.
    PastRetention,
}

/// What the reconcile pass found for one source record.
struct Checked {
    source: Approval,
    copy: Option<Approval>,
    replayed: bool,
    /// The target's decision replayed on the source ([`Plan::target_answers`]); in a dry run,
    /// one that would be.
    source_repaired: bool,
    /// The copy's key, when the target holds one it cannot read.
    unreadable_copy: Option<String>,
}

/// A by-id read that found a value it cannot decode: its key, to report (the run goes on).
fn unreadable<T>(read: Result<T, BackendError>) -> Result<Result<T, String>, BackendError> {
    match read {
        Ok(value) => Ok(Ok(value)),
        Err(BackendError::Corrupt { key, .. }) => Ok(Err(key)),
        Err(other) => Err(other),
    }
}

impl Migration {
    /// `progress` counts records (both passes); hidden, it costs nothing.
    pub fn new(
        source: Arc<dyn RecordTransfer>,
        target: Arc<dyn RecordTransfer>,
        plan: Plan,
        progress: ProgressBar,
    ) -> Self {
        Self {
            source,
            target,
            plan,
            progress,
        }
    }

    /// Both passes; the reconcile pass only after a copy pass that was not stopped early. A
    /// scan that keeps failing stops the run with the report so far (`stopped_by`): the counts
    /// of hours of work are printed, not thrown away.
    pub async fn run(&self) -> Report {
        let mut report = Report::new(self.plan.dry_run);
        if let Err(error) = self.both_passes(&mut report).await {
            report.stopped_early = true;
            report.stopped_by = Some(crate::app::chain(&error));
        }
        report
    }

    async fn both_passes(&self, report: &mut Report) -> Result<(), BackendError> {
        self.copy(report).await?;
        if !report.stopped_early {
            self.reconcile(report).await?;
        }
        Ok(())
    }

    /// Starts counting a pass afresh: the spinner's count is of this pass's records.
    fn phase(&self, name: &'static str) {
        self.progress.reset();
        self.progress.set_message(name);
    }

    /// Imports every source record the plan covers (in a dry run, only looks them up).
    pub async fn copy(&self, report: &mut Report) -> Result<(), BackendError> {
        self.phase("copying");
        // What cannot be read is reported by the reconcile pass, which sees the final state.
        let failed_before = report.failed.len();
        let pass = self
            .for_each(
                &self.source,
                "copy",
                |approval| self.copy_one(approval),
                |copied| match copied {
                    Copied::Imported => report.imported += 1,
                    Copied::ImportedAndReplayed => {
                        report.imported += 1;
                        report.decisions_replayed += 1;
                    }
                    Copied::AlreadyPresent => report.already_present += 1,
                    Copied::AlreadyPresentAndReplayed => {
                        report.already_present += 1;
                        report.decisions_replayed += 1;
                    }
                    Copied::WouldImport => report.would_import += 1,
                    // Counted by the reconcile pass, which finds it missing from the target.
                    Copied::PastRetention => {}
                },
                failed_before,
            )
            .await;
        report.failed.extend(pass.failed);
        report.stopped_early |= pass.stopped_early;
        pass.stopped_by.map_or(Ok(()), Err)
    }

    /// Compares every source record with its copy, replaying late decisions, then looks for
    /// records only the target has; fills the counts and differences of `report`.
    pub async fn reconcile(&self, report: &mut Report) -> Result<(), BackendError> {
        self.phase("reconciling");
        let mut seen: HashSet<u128> = HashSet::new();
        let failed_before = report.failed.len();
        let in_source = self
            .for_each(
                &self.source,
                "reconcile",
                |approval| self.check_one(approval),
                |checked| {
                    seen.insert(seen_key(&checked.source.tenant, &checked.source.id));
                    if let Some(key) = checked.unreadable_copy {
                        report.unreadable.target.insert(key);
                        return;
                    }
                    report.decisions_replayed += u64::from(checked.replayed);
                    if self.plan.dry_run {
                        report.would_repair_source += u64::from(checked.source_repaired);
                    } else {
                        report.source_repaired += u64::from(checked.source_repaired);
                    }
                    // Both sides as of one instant after both were read: an approval whose
                    // deadline fell between the two reads is expired on both.
                    let now = Timestamp::now();
                    if checked.copy.is_none() && self.target.past_retention(&checked.source, now) {
                        report.past_retention.target += 1;
                        return;
                    }
                    report.compare(
                        checked.source.as_of(now),
                        checked.copy.map(|c| c.as_of(now)),
                    );
                },
                failed_before,
            )
            .await;
        // A source record that failed is not looked for as "only in the target" either: it
        // is reported once, with its error.
        seen.extend(in_source.failed.iter().map(|f| seen_key(&f.tenant, &f.id)));
        report.unreadable.source.extend(in_source.unreadable);
        report.failed.extend(in_source.failed);
        if let Some(error) = in_source.stopped_by {
            return Err(error);
        }
        if in_source.stopped_early {
            report.stopped_early = true;
            return Ok(());
        }
        self.phase("looking for records only the target has");
        let seen = &seen;
        let failed_before = report.failed.len();
        let in_target = self
            .for_each(
                &self.target,
                "reconcile",
                |copy| async move {
                    if seen.contains(&seen_key(&copy.tenant, &copy.id)) {
                        return Ok(None);
                    }
                    // Written after the source was scanned (a soak writes both engines): the
                    // source has it now, and the two are compared like any other.
                    let source =
                        unreadable(retry("get", || self.source.get(&copy.tenant, &copy.id)).await)?;
                    let other = source.as_ref().ok().and_then(Option::as_ref);
                    let copy = self
                        .read_again_if_moved_on(&self.target, copy, other)
                        .await?;
                    let mut source = source;
                    let copied_back = match &source {
                        Ok(None) => self.copy_back(&copy).await?,
                        _ => None,
                    };
                    if copied_back == Some(ImportOutcome::AlreadyPresent) {
                        // Written there meanwhile (the soak's own mirror): compared as it is.
                        source = unreadable(
                            retry("get", || self.source.get(&copy.tenant, &copy.id)).await,
                        )?;
                    }
                    Ok(Some((copy, source, copied_back)))
                },
                |found| {
                    let now = Timestamp::now();
                    match found {
                        None => {}
                        Some((_, Err(key), _)) => {
                            report.unreadable.source.insert(key);
                        }
                        Some((copy, Ok(Some(source)), _)) => {
                            report.compare(source.as_of(now), Some(copy.as_of(now)));
                        }
                        // Copied back: both sides hold it.
                        Some((copy, Ok(None), Some(ImportOutcome::Imported))) => {
                            report.source_repaired += 1;
                            let copy = copy.as_of(now);
                            report.compare(copy.clone(), Some(copy));
                        }
                        // The source kept it for less time than the target does.
                        Some((copy, Ok(None), _)) if self.source.past_retention(&copy, now) => {
                            report.past_retention.source += 1;
                        }
                        Some((copy, Ok(None), _)) => {
                            if self.plan.dry_run && self.plan.target_answers {
                                report.would_repair_source += 1;
                            }
                            report.only_in_target(copy.as_of(now));
                        }
                    }
                },
                failed_before,
            )
            .await;
        report.unreadable.target.extend(in_target.unreadable);
        report.failed.extend(in_target.failed);
        report.stopped_early |= in_target.stopped_early;
        in_target.stopped_by.map_or(Ok(()), Err)
    }

    /// A record only the target holds, when the target is the engine that answers: the source
    /// (its secondary in the soak) missed it (a mirrored submit that failed or timed out),
    /// and nothing else copies it there, so every run listed it and exited 1 until the
    /// target dropped it. Imported into the source (never overwriting); `None` on a dry run,
    /// or when the source is the one that answers.
    async fn copy_back(&self, copy: &Approval) -> Result<Option<ImportOutcome>, BackendError> {
        if !self.plan.target_answers || self.plan.dry_run {
            return Ok(None);
        }
        // An import answers `PastRetention` itself for a record the source would have dropped.
        retry("import", || self.source.import(copy.clone()))
            .await
            .map(Some)
    }

    async fn copy_one(&self, approval: Approval) -> Result<Copied, BackendError> {
        if self.plan.dry_run {
            if self.target.past_retention(&approval, Timestamp::now()) {
                return Ok(Copied::PastRetention);
            }
            // Something the target cannot read is there all the same: the reconcile pass
            // names it among the unreadable keys, as it does on a real run.
            let found =
                unreadable(retry("get", || self.target.get(&approval.tenant, &approval.id)).await)?;
            return Ok(match found {
                Ok(Some(_)) | Err(_) => Copied::AlreadyPresent,
                Ok(None) => Copied::WouldImport,
            });
        }
        let imported = retry("import", || self.target.import(approval.clone())).await?;
        Ok(match imported {
            ImportOutcome::Imported if !approval.is_decided() => {
                // Decided between the scan and the import, the decision reached no copy (a
                // soak's mirror found none): replayed now, not after the whole copy pass,
                // hours later for millions of records, by when the copy may have expired.
                if self
                    .replay_late_decision(&approval.tenant, &approval.id)
                    .await?
                {
                    Copied::ImportedAndReplayed
                } else {
                    Copied::Imported
                }
            }
            ImportOutcome::Imported => Copied::Imported,
            // A re-run after an outage of the target (the cut-over runbook's remedy): the
            // decisions its copies missed are replayed now, not after the whole copy pass,
            // by when a copy may have expired there for good. The scanned record's decision
            // is final: only the copy is read (most are decided already: one read each).
            ImportOutcome::AlreadyPresent if approval.is_decided() => {
                if self.replay_onto_copy(&approval).await? {
                    Copied::AlreadyPresentAndReplayed
                } else {
                    Copied::AlreadyPresent
                }
            }
            // Pending when scanned: copied by an earlier run, or by this one's first attempt,
            // which landed though its call timed out (the retry hears "already present"): a
            // decision made since the scan is replayed now, as for a fresh import, not hours
            // later by the reconcile pass, by when the copy may have expired for good.
            ImportOutcome::AlreadyPresent => {
                if self
                    .replay_late_decision(&approval.tenant, &approval.id)
                    .await?
                {
                    Copied::AlreadyPresentAndReplayed
                } else {
                    Copied::AlreadyPresent
                }
            }
            ImportOutcome::PastRetention => Copied::PastRetention,
        })
    }

    /// Reads the source's record again and, if it was decided, decides the target's copy the
    /// same way, if the target's record is a pending copy of it (not another approval under
    /// the same id); whether that decided the copy.
    async fn replay_late_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<bool, BackendError> {
        let Ok(Some(now)) = unreadable(retry("get", || self.source.get(tenant, id)).await)? else {
            return Ok(false);
        };
        self.replay_onto_copy(&now).await
    }

    /// Decides the target's copy of `decided` as it was decided, if the target holds a pending
    /// copy of that approval (not another approval under the same id); whether that decided
    /// the copy.
    async fn replay_onto_copy(&self, decided: &Approval) -> Result<bool, BackendError> {
        let Some(decision) = decided.decision() else {
            return Ok(false);
        };
        let (tenant, id) = (&decided.tenant, &decided.id);
        // An unreadable copy is the reconcile pass's to report, not a failure here.
        let copy = unreadable(retry("get", || self.target.get(tenant, id)).await)?;
        if !matches!(copy, Ok(Some(copy)) if copy.status == Status::Pending && copy.same_approval(decided))
        {
            return Ok(false);
        }
        Ok(matches!(
            replay(&self.target, tenant, id, &decision).await?,
            Replayed::Decided(_)
        ))
    }

    /// `scanned` (from `side`'s scan page), read again from `side` when its status differs from
    /// `other`'s, the other side's record read after the page: a decision made in between (a
    /// soak mirrors it within milliseconds) read as "pending against accepted", a difference on
    /// every run under traffic. Gone or unreadable since, the scanned record is what there is
    /// to compare.
    async fn read_again_if_moved_on(
        &self,
        side: &Arc<dyn RecordTransfer>,
        scanned: Approval,
        other: Option<&Approval>,
    ) -> Result<Approval, BackendError> {
        let now = Timestamp::now();
        if other.is_none_or(|o| status_as_of(o, now) == status_as_of(&scanned, now)) {
            return Ok(scanned);
        }
        let (tenant, id) = (&scanned.tenant, &scanned.id);
        Ok(
            match unreadable(retry("get", || side.get(tenant, id)).await)? {
                Ok(Some(fresh)) => fresh,
                Ok(None) | Err(_) => scanned,
            },
        )
    }

    async fn check_one(&self, scanned: Approval) -> Result<Checked, BackendError> {
        let (tenant, id) = (&scanned.tenant.clone(), &scanned.id.clone());
        let mut copy = match unreadable(retry("get", || self.target.get(tenant, id)).await)? {
            Ok(copy) => copy,
            Err(key) => {
                return Ok(Checked {
                    source: scanned,
                    copy: None,
                    replayed: false,
                    source_repaired: false,
                    unreadable_copy: Some(key),
                })
            }
        };
        let mut source = self
            .read_again_if_moved_on(&self.source, scanned, copy.as_ref())
            .await?;
        let mut replayed = false;
        // Decided in the source after the copy was made: the first decision is the source's.
        // (A record under the same id that is another approval is a difference, never
        // settled by the other's decision.)
        let late = copy
            .as_ref()
            .is_some_and(|c| !c.is_decided() && c.same_approval(&source));
        if let (true, Some(decision), false) = (late, source.decision(), self.plan.dry_run) {
            match replay(&self.target, tenant, id, &decision).await? {
                Replayed::Decided(now) => {
                    replayed = true;
                    copy = Some(now);
                }
                Replayed::Settled(now) => copy = Some(now),
                Replayed::Missing => copy = None,
                Replayed::Refused => {}
            }
        }
        let mut source_repaired = false;
        // The answering target decided what its secondary, the source, still holds pending (a
        // mirrored decision the source missed): the source follows, as a read through the
        // service would have it. Without this, a rollback's "run it until it exits 0" never
        // ended for such a record.
        let missed = copy
            .as_ref()
            .filter(|copy| copy.same_approval(&source))
            .and_then(Approval::decision);
        if let (true, true, Some(decision)) = (
            self.plan.target_answers,
            source.status == Status::Pending,
            missed,
        ) {
            if self.plan.dry_run {
                // What a real run would do; the source is left as it is.
                return Ok(Checked {
                    source,
                    copy,
                    replayed,
                    source_repaired: true,
                    unreadable_copy: None,
                });
            }
            match replay(&self.source, tenant, id, &decision).await? {
                Replayed::Decided(now) => {
                    source_repaired = true;
                    source = now;
                }
                Replayed::Settled(now) => source = now,
                Replayed::Missing | Replayed::Refused => {}
            }
        }
        Ok(Checked {
            source,
            copy,
            replayed,
            source_repaired,
            unreadable_copy: None,
        })
    }

    /// Scans `backend` to its end, runs `each` on every record of the plan's tenants with the
    /// plan's concurrency, and hands the results to `sink` in this task (no locks needed).
    /// A record the scan returns again (Redis' SCAN may, and a pending record's shadow key can
    /// come after its own) is passed over: each pass copies, compares and counts it once (a key
    /// of 16 bytes per record is kept for it).
    /// Pages are one stream: the next page is fetched while the last records of this one are in
    /// flight, rather than draining to zero at every page boundary. A record `each` fails on is
    /// noted in the pass's `failed` (as part of `pass`); once the run's failures
    /// (`failed_before` and these) reach [`MAX_FAILED_RECORDS`], the scan stops there. A scan
    /// that fails stops the run: what it would have read next is unknown.
    async fn for_each<T, F, Fut>(
        &self,
        backend: &Arc<dyn RecordTransfer>,
        pass: &'static str,
        each: F,
        mut sink: impl FnMut(T),
        failed_before: usize,
    ) -> Pass
    where
        F: Fn(Approval) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        // State: the cursor of the next page, `None` once the last page was read.
        let pages = stream::try_unfold(Some(None::<String>), |cursor| async move {
            let Some(cursor) = cursor else {
                return Ok(None);
            };
            let page = retry_for(SCAN_RETRYING, "scan", || {
                backend.scan(cursor.as_deref(), SCAN_BATCH)
            })
            .await?;
            let next = page.next.clone().map(Some);
            Ok::<_, BackendError>(Some((page, next)))
        });
        let mut unreadable = BTreeSet::new();
        let mut scanned: HashSet<u128> = HashSet::new();
        let mut failed = Vec::new();
        let each = |approval: Approval| {
            let (tenant, id) = (approval.tenant.clone(), approval.id.clone());
            let done = each(approval);
            async move {
                done.await.map_err(|error| FailedRecord {
                    tenant,
                    id,
                    pass,
                    error: crate::app::chain(&error),
                })
            }
        };
        let finished = pages
            .map_ok(|page| {
                unreadable.extend(
                    page.unreadable
                        .into_iter()
                        .filter(|key| self.covers_key(key)),
                );
                let first_seen: Vec<Approval> = page
                    .items
                    .into_iter()
                    .filter(|a| {
                        self.covers(&a.tenant) && scanned.insert(seen_key(&a.tenant, &a.id))
                    })
                    .collect();
                stream::iter(first_seen.into_iter().map(Ok::<_, BackendError>))
            })
            .try_flatten()
            .map_ok(|approval| each(approval).map(Ok))
            .try_buffer_unordered(self.plan.concurrency.max(1))
            .map_err(Stop::Backend)
            .try_for_each(|result| {
                self.progress.inc(1);
                match result {
                    Ok(value) => sink(value),
                    Err(record) => {
                        tracing::warn!(
                            tenant = %record.tenant,
                            id = %record.id,
                            error = %record.error,
                            "{pass} failed on a record; passing it over"
                        );
                        failed.push(record);
                    }
                }
                let stop = failed_before + failed.len() >= MAX_FAILED_RECORDS;
                futures_util::future::ready(if stop {
                    Err(Stop::TooManyFailures)
                } else {
                    Ok(())
                })
            })
            .await;
        let (stopped_early, stopped_by) = match finished {
            Ok(()) => (false, None),
            Err(Stop::TooManyFailures) => (true, None),
            Err(Stop::Backend(error)) => (false, Some(error)),
        };
        Pass {
            unreadable,
            failed,
            stopped_early,
            stopped_by,
        }
    }

    fn covers(&self, tenant: &TenantId) -> bool {
        self.plan.tenants.is_empty() || self.plan.tenants.contains(tenant)
    }

    /// Whether a record's key (`approval:{tenant}:{id}` in both engines) is the plan's.
    fn covers_key(&self, key: &str) -> bool {
        // `approval:{tenant}:{id}`, or the shadow a lapsed one was read from.
        let key = key.strip_prefix("approvals:shadow").unwrap_or(key);
        self.plan.tenants.is_empty()
            || key
                .split(':')
                .nth(1)
                .is_some_and(|tenant| self.plan.tenants.iter().any(|t| t.as_str() == tenant))
    }
}

/// What one scan of a side ended with.
struct Pass {
    /// Keys of the plan's records the scan could not read.
    unreadable: BTreeSet<String>,
    failed: Vec<FailedRecord>,
    stopped_early: bool,
    /// A scan that kept failing: the run stops, with what this pass found so far reported.
    stopped_by: Option<BackendError>,
}

/// Why a scan stopped before its end.
enum Stop {
    Backend(BackendError),
    TooManyFailures,
}

/// What a decision replayed on one side found there.
enum Replayed {
    /// It decided the record, which is now this.
    Decided(Approval),
    /// The record had its outcome already (decided, or expired), this.
    Settled(Approval),
    /// The side has no such record.
    Missing,
    /// Refused as the submitter's own decision: the record is as it was.
    Refused,
}

/// Decides `id` on `side` as `decision` says (its reviewer, reason and time), with retries.
async fn replay(
    side: &Arc<dyn RecordTransfer>,
    tenant: &TenantId,
    id: &ApprovalId,
    decision: &approvals_core::DecisionRequest,
) -> Result<Replayed, BackendError> {
    Ok(
        match retry("decide", || side.decide(tenant, id, decision.clone())).await? {
            DecisionOutcome::Decided(now) => Replayed::Decided(now),
            DecisionOutcome::AlreadyDecided(now) | DecisionOutcome::Expired(now) => {
                Replayed::Settled(now)
            }
            DecisionOutcome::NotFound => Replayed::Missing,
            DecisionOutcome::SelfApproval => Replayed::Refused,
        },
    )
}

/// `call` until it succeeds or fails for a reason retrying cannot fix, backing off between
/// attempts: one unreachable moment must not abort a migration of a million records.
async fn retry<T, Fut>(what: &str, call: impl Fn() -> Fut) -> Result<T, BackendError>
where
    Fut: Future<Output = Result<T, BackendError>>,
{
    retry_for(RECORD_RETRYING, what, call).await
}

/// Calls `call` until it succeeds, fails otherwise than by its side not answering, or
/// `retrying` says to stop.
async fn retry_for<T, Fut>(
    retrying: Retrying,
    what: &str,
    call: impl Fn() -> Fut,
) -> Result<T, BackendError>
where
    Fut: Future<Output = Result<T, BackendError>>,
{
    let started = tokio::time::Instant::now();
    let (mut attempt, mut pause, mut timeouts) = (1, Duration::from_millis(200), 0);
    loop {
        let answer = call().await;
        let in_time = started.elapsed() + pause < retrying.refused_for;
        match answer {
            Err(error @ BackendError::Timeout(_))
                if timeouts < retrying.timeouts && (timeouts == 0 || in_time) =>
            {
                tracing::warn!(%error, attempt, "{what} failed; retrying");
                timeouts += 1;
                attempt += 1;
            }
            Err(error @ BackendError::Unavailable { .. }) if in_time => {
                tracing::warn!(%error, attempt, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
                pause = (pause * 2).min(MOST_BACKOFF);
            }
            result => return result,
        }
    }
}

/// `approval`'s status as of `now` (a pending one past its deadline is expired).
fn status_as_of(approval: &Approval, now: Timestamp) -> Status {
    if approval.status == Status::Pending && now >= approval.expires_at {
        Status::Expired
    } else {
        approval.status
    }
}

/// A source record as the reconcile pass remembers it: 16 bytes of its tenant's and id's
/// digest, not the two strings (a hundred bytes and more each, with the set's overhead: a few
/// million records took the CLI's memory on a small operations host). Two records share a key
/// with a chance of about n² / 2¹²⁹.
fn seen_key(tenant: &TenantId, id: &ApprovalId) -> u128 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(tenant.as_str())
        .chain_update([0])
        .chain_update(id.as_str())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}
