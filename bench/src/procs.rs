//! CPU time and memory of local processes, from `/proc` (Linux only, like the rest of the
//! benchmark).

use std::fs;

/// `/proc` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 for
/// user space on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of one `/proc/<pid>/stat`, and its process group.
fn stat(path: &str) -> Option<(u64, f64)> {
    let text = fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3.. of the man page, so index = number - 3.
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, (utime + stime) / TICKS_PER_SECOND))
}

/// `/proc/<pid>` of every live process of group `pgid`, with the CPU seconds it used so far.
fn group(pgid: u64) -> Vec<(std::path::PathBuf, f64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let (group, seconds) = stat(&format!("{}/stat", e.path().display()))?;
            (group == pgid).then(|| (e.path(), seconds))
        })
        .collect()
}

/// CPU seconds used so far by every live process of process group `pgid` (a target started
/// with `setsid`: the service, or the peer's uvicorn and its workers).
pub fn group_cpu_seconds(pgid: u64) -> f64 {
    group(pgid).into_iter().map(|(_, seconds)| seconds).sum()
}

/// CPU seconds this process (the load generator) used so far.
pub fn own_cpu_seconds() -> f64 {
    stat("/proc/self/stat").map_or(0.0, |(_, s)| s)
}

/// Resident memory of every process of group `pgid`, in kB.
pub fn group_rss_kb(pgid: u64) -> u64 {
    group(pgid)
        .into_iter()
        .filter_map(|(path, _)| fs::read_to_string(path.join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}
