//! The request path's Redis connections: a small, fixed set of multiplexed connections that
//! pipeline every caller's commands, and a bound on the calls in flight.
//!
//! A pool of dedicated connections (deadpool, as before) costs two extra commands per call
//! (its recycle check: `PING` and `UNWATCH`) and one small socket write per command. A
//! multiplexed connection sends each command as it comes and batches what is queued into one
//! write, so one call is one command and many callers share a few sockets. Nothing here needs a
//! dedicated connection: the engine sends no blocking commands and no transactions (its
//! atomic steps are Lua scripts); pub/sub has its own connection (`waiters`).
//!
//! Each `ConnectionManager` connects lazily and reconnects by itself after a failure, and is
//! replaced when its server turns out to be a replica (`replaceable`); the caller's deadline
//! (`redis.call_timeout`, applied by the backend) bounds every call, reconnecting included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use approvals_core::{BackendError, CallStatus};
use redis::aio::ConnectionManagerConfig;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::IntoConnectionInfo;
use redis::RedisResult;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::replaceable::{Handed, ReplaceableConnection};
use crate::settings::RedisSettings;

/// A client whose connections notice a peer that went away without a word. A connection idle
/// behind a NAT or load balancer is dropped by it after minutes (4 on some clouds) with no
/// reset: keepalive probes every 30 s keep such a mapping open, and find a dead peer within
/// about a minute. Unacknowledged writes (a partition) give up after 20 s, so the connection
/// is replaced instead of failing every call until the kernel's 15 minutes.
pub fn open_client(url: &str) -> redis::RedisResult<redis::Client> {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(20));
    let info = url.into_connection_info()?.set_tcp_settings(tcp);
    redis::Client::open(info)
}

pub(crate) struct Connections {
    managers: Vec<ReplaceableConnection>,
    next: AtomicUsize,
    /// One permit per call in flight: beyond `redis.max_in_flight`, callers queue here (and
    /// time out under their deadline) rather than in Redis' client buffers, where they could
    /// not be seen.
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_in_flight: usize,
}

/// A call's right to be in flight (held until dropped); the connection to send it on.
pub(crate) struct Lease {
    /// The connection, and which of them, to tell it what the call answered
    /// ([`Connections::answered`]).
    pub(crate) turn: (usize, Handed),
    pub(crate) slot: OwnedSemaphorePermit,
}

impl Connections {
    pub(crate) fn open(
        client: &redis::Client,
        settings: &RedisSettings,
    ) -> Result<Self, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.call_timeout))
            // The caller's deadline covers the response; a second timer per call is waste.
            .set_response_timeout(None)
            // One attempt per call: the next call tries again, each under its own deadline.
            .set_number_of_retries(1)
            // Room for every call the semaphore lets through, so none waits unseen.
            .set_pipeline_buffer_size(settings.max_in_flight);
        let managers = (0..settings.connections.max(1))
            .map(|_| ReplaceableConnection::lazy(client.clone(), config.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| BackendError::unavailable("connect", e))?;
        Ok(Self {
            managers,
            next: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(settings.max_in_flight)),
            waiting: AtomicUsize::new(0),
            max_in_flight: settings.max_in_flight,
        })
    }

    /// Waits for a slot (cancel-safe: dropping the future gives up the place in the queue),
    /// then hands out the connections in turn.
    pub(crate) async fn lease(&self, op: &'static str) -> Result<Lease, BackendError> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let _counted = Decrement(&self.waiting);
                // Never closed, so never an error in practice.
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| BackendError::unavailable(op, e))?
            }
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.managers.len();
        Ok(Lease {
            turn: (turn, self.managers[turn].hand_out()),
            slot,
        })
    }

    /// What a call on a leased connection answered (a `READONLY` replaces it).
    pub(crate) fn answered<T>(&self, (turn, handed): &(usize, Handed), answer: &RedisResult<T>) {
        if let Some(connection) = self.managers.get(*turn) {
            connection.answered(handed, answer);
        }
    }

    pub(crate) fn status(&self) -> CallStatus {
        CallStatus {
            connections: self.managers.len(),
            in_flight: self.max_in_flight - self.slots.available_permits(),
            waiting: self.waiting.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Takes one off a counter when dropped (also when the waiting future is cancelled).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
