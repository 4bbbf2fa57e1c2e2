//! How often a failure that repeats (a chore every 250 ms, a subscriber reconnecting while Redis
//! is down) reaches the log: when it starts, then at most once per [`REMIND_EVERY`] with how
//! many failures there were since, and when it stops. The metrics count every failure; the log
//! says that something is wrong without drowning everything else.

use std::time::{Duration, Instant};

/// The longest a failing thing stays silent in the log.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What to log about one outcome of a repeated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLog {
    /// Nothing to say.
    Quiet,
    /// It started failing.
    Started,
    /// Still failing: `failures` since the last line (this one included).
    StillFailing { failures: u64 },
    /// It works again after `failures` failures in a row.
    Recovered { failures: u64 },
}

/// The state of one repeated operation.
#[derive(Debug, Default)]
pub struct RepeatedFailure {
    /// Failures in a row so far, and since the last line about them.
    in_a_row: u64,
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl RepeatedFailure {
    pub fn failed(&mut self) -> FailureLog {
        self.failed_at(Instant::now())
    }

    pub fn succeeded(&mut self) -> FailureLog {
        let failures = std::mem::take(&mut self.in_a_row);
        self.since_logged = 0;
        self.logged_at = None;
        if failures == 0 {
            FailureLog::Quiet
        } else {
            FailureLog::Recovered { failures }
        }
    }

    fn failed_at(&mut self, now: Instant) -> FailureLog {
        self.in_a_row += 1;
        self.since_logged += 1;
        let verdict = match self.logged_at {
            None => FailureLog::Started,
            Some(at) if now.duration_since(at) >= REMIND_EVERY => FailureLog::StillFailing {
                failures: self.since_logged,
            },
            Some(_) => return FailureLog::Quiet,
        };
        self.logged_at = Some(now);
        self.since_logged = 0;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_every_quarter_second_is_logged_once_a_minute_with_its_count() {
        let mut state = RepeatedFailure::default();
        let start = Instant::now();
        let tick = Duration::from_millis(250);
        // Two and a half minutes of failures, every 250 ms.
        let lines: Vec<(usize, FailureLog)> = (0..600)
            .map(|i| (i, state.failed_at(start + tick * i as u32)))
            .filter(|(_, log)| *log != FailureLog::Quiet)
            .collect();
        assert_eq!(
            lines,
            [
                (0, FailureLog::Started),
                (240, FailureLog::StillFailing { failures: 240 }),
                (480, FailureLog::StillFailing { failures: 240 }),
            ]
        );
        assert_eq!(state.succeeded(), FailureLog::Recovered { failures: 600 });
        assert_eq!(state.succeeded(), FailureLog::Quiet);
        assert_eq!(state.failed_at(start), FailureLog::Started, "a new episode");
    }
}
