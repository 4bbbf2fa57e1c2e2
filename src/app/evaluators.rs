//! Policy evaluations run on a few threads of their own, never on the request workers.
//!
//! An evaluation is CPU work (tens of microseconds for the default bundle, up to the
//! instruction budget for a hostile input), so running it on an async worker would stall every
//! request queued behind it. `spawn_blocking` keeps it off the workers too, but pays for a
//! shared pool on every call (a lock, a condition variable, thread bookkeeping): about a fifth
//! of the submit throughput here. These threads live as long as the service, each keeps its
//! regorus VM loaded (`policy`), and under load they take the next job without sleeping.
//!
//! Bounded twice: `threads` evaluations run at once, and at most `QUEUED_PER_THREAD` per thread
//! wait in the queue; more callers wait (asynchronously, in order) for a place in it.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{oneshot, Semaphore};

use super::AppError;
use crate::policy::{PolicyGate, PolicyVerdict};

/// Jobs waiting per evaluation thread: enough that a thread finishing one finds the next.
const QUEUED_PER_THREAD: usize = 4;

struct Job {
    policy: Arc<PolicyGate>,
    /// Evaluated too, on the same thread (shadow evaluation).
    candidate: Option<Arc<PolicyGate>>,
    input: Value,
    answer: oneshot::Sender<(PolicyVerdict, Option<PolicyVerdict>)>,
}

pub(crate) struct Evaluators {
    jobs: crossbeam_channel::Sender<Job>,
    /// Places in the queue (running jobs included).
    places: Semaphore,
}

impl Evaluators {
    /// Starts `threads` evaluation threads; they end when this is dropped.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let capacity = threads * QUEUED_PER_THREAD;
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(capacity);
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("policy-{n}"))
                .spawn(move || {
                    for job in queue {
                        let shadow = job.candidate.map(|c| c.evaluate(&job.input));
                        let verdict = job.policy.evaluate_owned(job.input);
                        // The caller may have given up (its request was cancelled).
                        let _ = job.answer.send((verdict, shadow));
                    }
                })?;
        }
        Ok(Self {
            jobs,
            places: Semaphore::new(capacity),
        })
    }

    /// The verdict of `policy` on `input`, computed on an evaluation thread.
    pub(crate) async fn evaluate(
        &self,
        policy: Arc<PolicyGate>,
        candidate: Option<Arc<PolicyGate>>,
        input: Value,
    ) -> Result<(PolicyVerdict, Option<PolicyVerdict>), AppError> {
        // Never closed; and with a place held, the channel has room.
        let _place = self
            .places
            .acquire()
            .await
            .map_err(|e| AppError::Internal(e.into()))?;
        let (answer, verdict) = oneshot::channel();
        self.jobs
            .try_send(Job {
                policy,
                candidate,
                input,
                answer,
            })
            .map_err(|e| AppError::Internal(format!("policy queue: {e}").into()))?;
        verdict.await.map_err(|e| AppError::Internal(e.into()))
    }
}
