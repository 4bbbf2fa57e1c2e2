//! Results: one machine-readable `RESULT` line per measurement on stdout (bench.sh collects
//! them), a readable line on stderr; percentiles; the waiter gauge of `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Sums the samples of the waiter gauge in a Prometheus text exposition: the metric named
/// `exact`, or else every sample whose name contains `waiter` or `long_poll` (ours is
/// `approvals_long_polls_in_flight`) and is not a histogram/summary part or a counter.
/// `None` when there is no such sample.
pub fn sum_waiter_samples(text: &str, exact: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let wanted = match exact {
            Some(exact) => name == exact,
            None => {
                (name.contains("waiter") || name.contains("long_poll"))
                    && !["_bucket", "_sum", "_count", "_total", "_created"]
                        .iter()
                        .any(|suffix| name.ends_with(suffix))
            }
        };
        if !wanted {
            continue;
        }
        // The value follows the labels (which may contain spaces inside quotes).
        let rest = match line[name_end..].rfind('}') {
            Some(close) => &line[name_end + close + 1..],
            None => &line[name_end..],
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// What one measurement found.
pub struct Report {
    pub scenario: &'static str,
    pub ops: usize,
    pub secs: f64,
    /// Latencies of the successful operations, in microseconds (clamped at 0 for wake-ups).
    pub latencies_us: Vec<i64>,
    /// Wake-up only: the signed latencies (a waiter may be answered before the accept returns).
    pub raw_us: Option<Vec<i64>>,
    pub errors: BTreeMap<String, usize>,
    /// Free-form `key=value` pairs appended to the RESULT line.
    pub extra: Vec<(String, String)>,
}

impl Report {
    pub fn print(mut self, target: &str) {
        self.latencies_us.sort_unstable();
        let ms = |us: Option<i64>| {
            us.map_or_else(|| "nan".to_owned(), |v| format!("{:.3}", v as f64 / 1000.0))
        };
        let p50 = ms(percentile(&self.latencies_us, 50.0));
        let p99 = ms(percentile(&self.latencies_us, 99.0));
        let max = ms(self.latencies_us.last().copied());
        let errors: usize = self.errors.values().sum();
        let error_kinds = if self.errors.is_empty() {
            "-".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ops_per_sec = if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        };
        let mut line = format!(
            "RESULT target={target} scenario={} ops={} secs={:.3} ops_per_sec={ops_per_sec:.1} \
             p50_ms={p50} p99_ms={p99} max_ms={max} errors={errors} error_kinds={error_kinds}",
            self.scenario, self.ops, self.secs
        );
        if let Some(mut raw) = self.raw_us.take() {
            raw.sort_unstable();
            let _ = write!(
                line,
                " raw_min_ms={} raw_p50_ms={} raw_p99_ms={}",
                ms(raw.first().copied()),
                ms(percentile(&raw, 50.0)),
                ms(percentile(&raw, 99.0))
            );
        }
        for (k, v) in &self.extra {
            let _ = write!(line, " {k}={v}");
        }
        println!("{line}");
        eprintln!(
            "{target:>6} {:<13} {:>8} ops in {:>6.2} s = {ops_per_sec:>9.1} ops/s   p50 {p50} ms   p99 {p99} ms   max {max} ms   errors {errors} ({error_kinds})",
            self.scenario, self.ops, self.secs
        );
    }
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn waiter_gauge_is_found_and_summed() {
        let text = "# TYPE approvals_waiters gauge\napprovals_waiters{tenant=\"a b\"} 3\n\
                    approvals_waiters{tenant=\"c\"} 4\napprovals_waiter_seconds_count 9\n\
                    approvals_pending{tenant=\"c\"} 100\n";
        assert_eq!(sum_waiter_samples(text, None), Some(7.0));
        let ours = "approvals_long_polls_in_flight 200\napprovals_ttl_seconds{tenant=\"*\"} 3600\n";
        assert_eq!(sum_waiter_samples(ours, None), Some(200.0));
        assert_eq!(
            sum_waiter_samples(text, Some("approvals_pending")),
            Some(100.0)
        );
        assert_eq!(sum_waiter_samples("up 1\n", None), None);
    }
}
