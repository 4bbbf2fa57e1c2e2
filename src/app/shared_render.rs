//! `/metrics`, rendered once for the callers that ask while a render runs. Anyone may ask (on
//! the API port it carries no credentials, so no caller's limits count it), and a render walks
//! every series (the HTTP histograms, each tenant's pending figures): a flood of asks kept
//! every core rendering while tenants' requests waited.
//!
//! As `readiness`: a caller takes the last text only if that render finished after it arrived
//! (it was in flight then, or began since), so no answer is older than the ask.

use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;

#[derive(Default)]
pub(super) struct SharedRender {
    /// Held by the caller rendering now; the others wait for its text.
    turn: tokio::sync::Mutex<()>,
    /// Renders finished so far, and the last one's text.
    last: Mutex<(u64, Bytes)>,
}

impl SharedRender {
    pub(super) async fn run(&self, render: impl FnOnce() -> String) -> Bytes {
        let arrived = self.last().0;
        let _turn = self.turn.lock().await;
        {
            let last = self.last();
            if last.0 > arrived {
                return last.1.clone();
            }
        }
        let text = Bytes::from(render());
        let mut last = self.last();
        *last = (last.0 + 1, text.clone());
        text
    }

    fn last(&self) -> std::sync::MutexGuard<'_, (u64, Bytes)> {
        // Written whole: nothing a panicking holder could leave half-done.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
