//! Waiting on a service's `/metrics` for an event (a long-poll parked, a figure computed)
//! instead of guessing a delay. Test binaries include this file with `#[path]`.

use std::time::{Duration, Instant};

/// Polls `{base}/metrics` until `ready` holds for its text; panics naming `what` after
/// `within`. Returns the text.
pub async fn metrics_until(
    http: &reqwest::Client,
    base: &str,
    within: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never happened:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
