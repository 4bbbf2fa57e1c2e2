//! The pending figures behind `/metrics` (count and age per tenant), recomputed in the
//! background from the engine's indexes so that a scrape never touches the store and every
//! instance reports the same truth.

use std::time::{Duration, Instant};

use approvals_core::Timestamp;

use super::{chain, Approvals};

impl Approvals {
    /// Keeps the figures at most `interval` old until shutdown.
    pub async fn keep_figures_fresh(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Dropped at shutdown: a refresh on a slow Temporal (a visibility walk of up to
            // `scan_timeout`, then a ping) held up the exit past the supervisor's kill.
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.refresh_figures() => {}
            }
        }
    }

    async fn refresh_figures(&self) {
        let started = Instant::now();
        let bounds = self.metrics.age_bounds();
        match self.engine.pending_stats(bounds, Timestamp::now()).await {
            Ok(stats) => {
                self.metrics.set_pending(stats, started.elapsed());
                if self.metrics.set_figures_failing(false) {
                    tracing::info!("pending figures recomputed again");
                }
            }
            Err(error) => {
                crate::metrics::backend_error(&error, crate::metrics::ErrorSource::Figures);
                // Once per failing stretch: this runs every few seconds.
                if self.metrics.set_figures_failing(true) {
                    tracing::warn!(error = %chain(&error), "could not recompute pending figures");
                }
            }
        }
        // `approvals_backend_up` is the ping's answer, as `/readyz`'s, whatever the figures
        // did: set to 0 by a failed figures pass and to 1 by the next probe, it flapped on a
        // Temporal whose visibility walk is slow while every request was served. Stale
        // figures have an alert of their own. And readable is not enough: a full Redis
        // answers reads and refuses every write.
        let ready = self.engine.ping().await;
        let changed = self.metrics.set_backend_up(ready.is_ok());
        match &ready {
            Err(error) if changed => {
                tracing::warn!(error = %chain(error), "the engine is not ready")
            }
            Ok(()) if changed => tracing::info!("the engine is ready"),
            _ => {}
        }
    }
}
