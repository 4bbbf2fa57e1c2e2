//! A multiplexed connection that is replaced by a new one when its server answers `READONLY`.
//!
//! `ConnectionManager` reconnects only when its connection breaks. A failover that keeps the
//! old primary up as a replica of the promoted one (a virtual IP or DNS name moved over, the
//! old node demoted without dropping its clients) leaves the connection open to a server that
//! refuses every write: every submit, decision and sweep failed, and readiness with them,
//! until the process restarted. A new connection goes where the address now leads.

use std::sync::{Mutex, MutexGuard, PoisonError};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, ServerErrorKind};

pub struct ReplaceableConnection {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: Mutex<Current>,
}

struct Current {
    /// Counts replacements: an answer from an older connection replaces nothing.
    generation: u64,
    connection: ConnectionManager,
}

/// A connection handed out, and which one it was.
pub struct Handed {
    pub connection: ConnectionManager,
    generation: u64,
}

impl ReplaceableConnection {
    /// Connects on first use.
    pub fn lazy(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: Mutex::new(Current {
                generation: 0,
                connection,
            }),
        })
    }

    pub fn hand_out(&self) -> Handed {
        let current = self.current();
        Handed {
            connection: current.connection.clone(),
            generation: current.generation,
        }
    }

    /// Told what a call on `handed` answered: a `READONLY` replaces the connection, once for
    /// all the calls that met it. The next call connects anew (calls in flight on the old one
    /// finish there).
    pub fn answered<T>(&self, handed: &Handed, answer: &RedisResult<T>) {
        let Err(error) = answer else {
            return;
        };
        if error.kind() != ErrorKind::Server(ServerErrorKind::ReadOnly) {
            return;
        }
        let mut current = self.current();
        if current.generation != handed.generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(connection) => {
                tracing::warn!(
                    "Redis answered READONLY (a replica now): connecting again, to where the \
                     address leads now"
                );
                current.connection = connection;
                current.generation += 1;
            }
            Err(error) => tracing::warn!(%error, "Redis answered READONLY; reconnecting failed"),
        }
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        // Replaced whole under the lock: no invariant a panicking holder could break.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
