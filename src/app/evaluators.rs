//! Policy evaluations run on a few threads of their own, never on the request workers.
//!
//! An evaluation is CPU work (tens of microseconds for the default bundle, up to the
//! instruction budget for a hostile input), so running it on an async worker would stall every
//! request queued behind it. `spawn_blocking` keeps it off the workers too, but pays for a
//! shared pool on every call (a lock, a condition variable, thread bookkeeping): about a fifth
//! of the submit throughput here. These threads live as long as the service, each keeps its
//! regorus VM loaded (`policy`), and under load they take the next job without sleeping.
//!
//! Bounded twice: `threads` evaluations run at once, and the queue has `QUEUED_PER_THREAD`
//! places per thread, running jobs included; more callers wait (asynchronously, in order) for a place in it. A place
//! travels with its job and is given back when a thread is done with it, not when the caller
//! gives up: a cancelled caller's job still sits in the queue until a thread takes it (and
//! passes it over, as nobody waits for its verdict).
//!
//! One tenant holds at most half of the places: each evaluation may take up to its budget, so
//! a tenant whose policy is slow (or whose agents send many submits at once) would otherwise
//! fill the queue, and every other tenant's submits would wait behind its work. Past its share
//! a tenant's callers wait for one of its own places, not anyone's.
//!
//! And a free thread takes the oldest job of the tenant with the fewest evaluations running
//! (of those, the one served longest ago), not the oldest job: in first-come order, a tenant
//! whose slow evaluations fill every thread had its next ones taken before another tenant's
//! that came later, so that one waited for two rounds of them. Now it waits for the first
//! thread to come free, at most.
//!
//! A thread with nothing to do spins, then yields, for a few microseconds before it sleeps:
//! under load the next job comes that soon, and a sleep and a wake-up per evaluation (a system
//! call on each side, and a context switch) cost about a seventh of the submit throughput.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use approvals_core::TenantId;
use crossbeam_utils::Backoff;

use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::AppError;
use crate::policy::{PolicyGate, PolicyVerdict};

/// Places per evaluation thread, running jobs included. A lone busy tenant holds half of them,
/// 4 per thread: enough that a thread finishing one finds the next (with 2, under submit load
/// the threads often found the queue empty and slept).
const QUEUED_PER_THREAD: usize = 8;

struct Job {
    policy: Arc<PolicyGate>,
    /// Evaluated too, on the same thread (shadow evaluation).
    candidate: Option<Arc<PolicyGate>>,
    input: Value,
    answer: oneshot::Sender<(PolicyVerdict, Option<PolicyVerdict>)>,
    /// The job's place in the queue, free again once a thread has dropped the job.
    _place: OwnedSemaphorePermit,
    /// And in its tenant's share.
    share: TenantPlace,
}

/// The jobs waiting for a thread, and how many each tenant has running.
#[derive(Default)]
struct Queue {
    state: Mutex<Waiting>,
    ready: Condvar,
    /// `Waiting::queued`, readable without the lock: a thread waiting for work watches this,
    /// not the lock the request workers need to push.
    queued: AtomicUsize,
}

/// Kept per tenant, so that a thread picking the next job looks at the few tenants with work,
/// not at every queued job, under the lock every submit takes.
#[derive(Default)]
struct Waiting {
    /// Each tenant with jobs queued or running; forgotten once it has neither (then it was not
    /// served lately).
    tenants: HashMap<TenantId, TenantJobs>,
    /// Jobs pushed so far: a job's number, so that the oldest goes first among equals.
    pushed: u64,
    /// Jobs taken so far: when a tenant was last served.
    taken: u64,
    /// Threads asleep on `ready` and not yet woken: a push wakes one only if there is one (a
    /// notify is a system call even with nobody waiting). A spurious wake-up leaves a sleeper
    /// counted that is not asleep: at worst a later push wakes no one.
    asleep: usize,
    /// No more jobs come: threads end once the queue is empty.
    closed: bool,
}

#[derive(Default)]
struct TenantJobs {
    /// Oldest first, each with its number.
    jobs: VecDeque<(u64, Job)>,
    running: usize,
    /// The count of jobs taken when one of this tenant's was last taken; 0: not lately.
    served: u64,
}

impl Waiting {
    /// Takes the oldest job of the tenant with the fewest running, served longest ago.
    fn next_job(&mut self, queued: &AtomicUsize) -> Option<Job> {
        if queued.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.taken += 1;
        let taken = self.taken;
        let tenant = self
            .tenants
            .values_mut()
            .filter_map(|t| Some(((t.running, t.served, t.jobs.front()?.0), t)))
            .min_by_key(|(order, _)| *order)
            .map(|(_, tenant)| tenant)?;
        tenant.running += 1;
        tenant.served = taken;
        let (_, job) = tenant.jobs.pop_front()?;
        queued.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, job: Job) {
        let mut waiting = self.lock();
        waiting.pushed += 1;
        let number = waiting.pushed;
        let tenant = job.share.tenant.clone();
        waiting
            .tenants
            .entry(tenant)
            .or_default()
            .jobs
            .push_back((number, job));
        self.queued.fetch_add(1, Ordering::Relaxed);
        // The sleeper is counted off here, not when it wakes: until it has the lock again a
        // second push would wake it (or no one) once more, a system call for nothing.
        if waiting.asleep > 0 {
            waiting.asleep -= 1;
            self.ready.notify_one();
        }
    }

    /// The next job for a free thread, which is done with one of `finished`'s jobs (one lock
    /// for both): the oldest of the tenant with the fewest running, served longest ago.
    /// Blocks until there is one; `None` once closed and empty.
    fn take(&self, finished: Option<&TenantId>) -> Option<Job> {
        let mut waiting = self.lock();
        if let Some(tenant) = finished {
            if let Some(jobs) = waiting.tenants.get_mut(tenant) {
                jobs.running = jobs.running.saturating_sub(1);
                if jobs.running == 0 && jobs.jobs.is_empty() {
                    waiting.tenants.remove(tenant);
                }
            }
        }
        // Under load the next job comes within microseconds: spinning, then yielding, a little
        // while costs less than sleeping and being woken (a system call on both sides, for
        // most jobs when the threads keep up with the requests).
        let backoff = Backoff::new();
        loop {
            if let Some(job) = waiting.next_job(&self.queued) {
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            if backoff.is_completed() {
                waiting.asleep += 1;
                waiting = self
                    .ready
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            } else {
                drop(waiting);
                while self.queued.load(Ordering::Relaxed) == 0 && !backoff.is_completed() {
                    backoff.snooze();
                }
                waiting = self.lock();
            }
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

pub(crate) struct Evaluators {
    queue: Arc<Queue>,
    /// Places in the queue (running jobs included).
    places: Arc<Semaphore>,
    /// Per tenant with jobs queued or running, its share of the places.
    shares: Arc<Shares>,
    /// Places one tenant may hold at once.
    share: usize,
}

/// The tenants' shares; a tenant's entry lives while it holds a place.
type Shares = Mutex<HashMap<TenantId, Arc<Semaphore>>>;

/// A place in a tenant's share; the last one given back removes the tenant's entry.
struct TenantPlace {
    permit: Option<OwnedSemaphorePermit>,
    tenant: TenantId,
    shares: Arc<Shares>,
}

impl Drop for TenantPlace {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        // Nobody else holds or waits for its semaphore: the map's is the only reference.
        if shares
            .get(&self.tenant)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            shares.remove(&self.tenant);
        }
    }
}

impl Evaluators {
    /// Starts `threads` evaluation threads; they end when this is dropped.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let capacity = threads * QUEUED_PER_THREAD;
        let queue = Arc::new(Queue::default());
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("policy-{n}"))
                // Without the sandbox, tenant bundles are evaluated here: the stack they were
                // validated on.
                .stack_size(crate::policy::stack::SERVICE_STACK)
                .spawn(move || {
                    let mut finished = None;
                    while let Some(job) = queue.take(finished.as_ref()) {
                        let tenant = job.share.tenant.clone();
                        // Its caller gave up: its verdict would go nowhere.
                        if !job.answer.is_closed() {
                            // The active policy first: a candidate whose sandbox child dies
                            // must not cost the verdict that decides a new child's compile.
                            let (verdict, shadow) = match job.candidate {
                                Some(candidate) => {
                                    let verdict = job.policy.evaluate(&job.input);
                                    (verdict, Some(candidate.evaluate_candidate(job.input)))
                                }
                                None => (job.policy.evaluate_owned(job.input), None),
                            };
                            // The caller may have given up (its request was cancelled).
                            let _ = job.answer.send((verdict, shadow));
                        }
                        finished = Some(tenant);
                    }
                })?;
        }
        Ok(Self {
            queue,
            places: Arc::new(Semaphore::new(capacity)),
            shares: Arc::default(),
            share: (capacity / 2).max(1),
        })
    }

    /// A place in `tenant`'s share, once one is free.
    async fn tenant_place(&self, tenant: &TenantId) -> Result<TenantPlace, AppError> {
        // Declared first, dropped last: a caller that gives up while waiting drops its clone of
        // the semaphore before the place looks whether the entry is still used.
        let mut place = TenantPlace {
            permit: None,
            tenant: tenant.clone(),
            shares: self.shares.clone(),
        };
        // The entry stays while this clone (then the permit) is held.
        let semaphore = self
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
            .clone();
        // Never closed.
        place.permit = Some(
            semaphore
                .acquire_owned()
                .await
                .map_err(|e| AppError::Internal(e.into()))?,
        );
        Ok(place)
    }

    /// The verdict of `policy` on `input` for `tenant`, computed on an evaluation thread.
    pub(crate) async fn evaluate(
        &self,
        tenant: &TenantId,
        policy: Arc<PolicyGate>,
        candidate: Option<Arc<PolicyGate>>,
        input: Value,
    ) -> Result<(PolicyVerdict, Option<PolicyVerdict>), AppError> {
        let share = self.tenant_place(tenant).await?;
        // Never closed.
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AppError::Internal(e.into()))?;
        let (answer, verdict) = oneshot::channel();
        self.queue.push(Job {
            policy,
            candidate,
            input,
            answer,
            _place: place,
            share,
        });
        verdict.await.map_err(|e| AppError::Internal(e.into()))
    }
}

impl Drop for Evaluators {
    /// The threads end once they have drained what is queued.
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use serde_json::json;

    use super::*;
    use crate::policy::{PolicyDecision, PolicyFile};

    fn gate(text: &str) -> Arc<PolicyGate> {
        let file = PolicyFile {
            relative: "p.rego".into(),
            text: format!("package approvals\nimport rego.v1\n{text}\n"),
        };
        let gate = PolicyGate::from_files(&[file], "test").expect("bundle");
        // The VM alone: these tests time the queue, and a slow allow confirmed on the
        // interpreter would pass its one-second limit in a debug build.
        Arc::new(gate.with_budget(usize::MAX).confirming_allows(false))
    }

    /// Callers that gave up (a request timed out, a client went away) while their jobs were
    /// queued do not hand their places to new callers before the queue has room: the new
    /// ones wait their turn and are answered, where they used to find the queue full (500).
    #[tokio::test]
    async fn places_of_cancelled_callers_come_back_only_with_their_jobs() {
        let evaluators = Arc::new(Evaluators::start(1).expect("threads"));
        let tenant = TenantId::parse("t").expect("tenant");
        // Two tenants' jobs, as one holds at most half of the places: together they fill them.
        let other = TenantId::parse("u").expect("tenant");
        // Slow for a large `n` (the load-time trial has none).
        let slow = gate(
            "decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]} if { count([x | some x in numbers.range(1, input.n)]) > 0 }",
        );
        let quick = gate("decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}");
        // The one thread busy with a job whose caller waits, before the cancelled ones come:
        // a thread free to take them at once passes them over and gives their places back,
        // which is not what this test is about (and happened when the thread was slow to
        // start the first of them on a loaded machine).
        let running = {
            let (evaluators, other, slow) = (evaluators.clone(), other.clone(), slow.clone());
            tokio::spawn(async move {
                evaluators
                    .evaluate(&other, slow, None, json!({"n": 3_000_000}))
                    .await
            })
        };
        let taken = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while evaluators.places.available_permits() == QUEUED_PER_THREAD
            || evaluators.queue.queued.load(Ordering::Relaxed) > 0
        {
            assert!(
                std::time::Instant::now() < taken,
                "the thread never took the job"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        for n in 1..QUEUED_PER_THREAD {
            // Queued (a place taken, the job sent), then dropped before any answer: half of
            // the places each tenant's, the running job among `other`'s.
            let whose = if n % 2 == 0 { &other } else { &tenant };
            let cancelled = evaluators
                .evaluate(whose, slow.clone(), None, json!({"n": 3_000_000}))
                .now_or_never();
            assert!(
                cancelled.is_none(),
                "answered before the thread could run it"
            );
        }
        assert_eq!(
            evaluators.places.available_permits(),
            0,
            "the running job and the cancelled ones hold every place"
        );
        let answers = futures::future::join_all(
            (0..QUEUED_PER_THREAD)
                .map(|_| evaluators.evaluate(&tenant, quick.clone(), None, json!({}))),
        )
        .await;
        for answer in answers {
            let (verdict, _) = answer.expect("answered, not refused");
            assert_eq!(verdict.decision, PolicyDecision::Allow);
        }
        let (verdict, _) = running
            .await
            .expect("joined")
            .expect("the running job answered");
        assert_eq!(verdict.decision, PolicyDecision::Allow);
    }

    /// A tenant that fills the queue with slow evaluations holds half of its places, and a
    /// free thread takes another tenant's job before its next one: that tenant's submit waits
    /// for the one evaluation running, not for the busy tenant's queued ones too.
    #[tokio::test]
    async fn one_tenant_holds_at_most_half_of_the_queue() {
        let evaluators = Arc::new(Evaluators::start(1).expect("threads"));
        let busy = TenantId::parse("busy").expect("tenant");
        let other = TenantId::parse("other").expect("tenant");
        let slow = gate(
            "decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]} if { count([x | some x in numbers.range(1, input.n)]) > 0 }",
        );
        let quick = gate("decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}");
        let capacity = QUEUED_PER_THREAD;
        let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut busy_calls = Vec::new();
        for _ in 0..capacity {
            let (evaluators, tenant, slow) = (evaluators.clone(), busy.clone(), slow.clone());
            let finished = finished.clone();
            busy_calls.push(tokio::spawn(async move {
                let answer = evaluators
                    // Long enough that the other tenant's job is pushed while the first of
                    // these runs, even on a loaded machine.
                    .evaluate(&tenant, slow, None, json!({"n": 1_000_000}))
                    .await;
                finished
                    .lock()
                    .expect("lock")
                    .push(std::time::Instant::now());
                answer
            }));
        }
        // The busy tenant's calls have taken every place they can.
        while evaluators.places.available_permits() > capacity / 2 {
            tokio::task::yield_now().await;
        }
        let (verdict, _) = evaluators
            .evaluate(&other, quick, None, json!({}))
            .await
            .expect("answered");
        let answered = std::time::Instant::now();
        assert_eq!(verdict.decision, PolicyDecision::Allow);
        let before = finished
            .lock()
            .expect("lock")
            .iter()
            .filter(|at| **at < answered)
            .count();
        assert!(
            before <= 1,
            "the other tenant waited behind {before} of the busy tenant's evaluations"
        );
        for call in busy_calls {
            let (verdict, _) = call.await.expect("task").expect("answered");
            assert_eq!(verdict.decision, PolicyDecision::Allow);
        }
        // A thread drops its job (and with it the places) just after sending the verdict.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !evaluators.shares.lock().expect("lock").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no tenant entry is left once its places are given back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Many callers of several tenants on several threads, in waves with pauses between them
    /// (long enough for the threads to go to sleep): every one is answered, so no wake-up is
    /// lost between a push and a thread going to sleep.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_caller_is_answered_under_load() {
        let evaluators = Arc::new(Evaluators::start(3).expect("threads"));
        let quick = gate("decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}");
        for wave in 0..30 {
            let calls = (0..50).map(|n| {
                let (evaluators, quick) = (evaluators.clone(), quick.clone());
                let tenant = TenantId::parse(format!("t{}", n % 5)).expect("tenant");
                tokio::spawn(
                    async move { evaluators.evaluate(&tenant, quick, None, json!({})).await },
                )
            });
            let answered = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                futures::future::join_all(calls),
            )
            .await
            .unwrap_or_else(|_| panic!("wave {wave}: a caller was never answered"));
            for answer in answered {
                let (verdict, _) = answer.expect("task").expect("answered");
                assert_eq!(verdict.decision, PolicyDecision::Allow);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // A thread gives a job's place back just after sending its verdict.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while evaluators.places.available_permits() < 3 * QUEUED_PER_THREAD {
            assert!(
                std::time::Instant::now() < deadline,
                "every place comes back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}
