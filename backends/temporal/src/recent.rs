//! Read-your-writes over the visibility API, within one process.
//!
//! Visibility (what `list`, `audit`, `pending_stats` and `scan` read) is written asynchronously
//! by the server: a start or a close shows there some milliseconds later (more under load). So
//! that a caller who has just submitted or decided sees its own change in the next listing, the
//! backend remembers the records it wrote or learned are settled during the last
//! [`REMEMBER_FOR`] and merges them into visibility results. An approval changes only once
//! (pending to settled), so merging is unambiguous: the settled version wins. Decision-log
//! events it recorded (no approval to hold them) are remembered apart and merged by event id.
//!
//! Other processes still see the visibility lag (see DESIGN.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use approvals_core::{Approval, AuditEvent, AuditKind, TenantId, Timestamp};

use crate::record::{decided_event, ended_event};

/// Far longer than the visibility lag observed on a loaded dev server (tens of ms).
pub const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// How long a remembered *pending* record that a visibility query did not return is still
/// added to its result. Past that, visibility has had its time, and its absence means the
/// approval was settled elsewhere (another instance decided it, its workflow closed): adding
/// the pending copy would list a decided approval as pending, and count it, for the rest of
/// [`REMEMBER_FOR`]. A settled record never goes back, so those are added for the whole time.
const PENDING_UNSEEN_FOR: Duration = Duration::from_secs(5);

/// A record with its audit events, as visibility or this process knows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub approval: Approval,
    pub events: Vec<AuditEvent>,
}

impl Row {
    /// Merges two views of one approval: the settled record wins, events are united.
    fn merge(self, other: Row) -> Row {
        let approval = if other.approval.is_decided() && !self.approval.is_decided() {
            other.approval
        } else {
            self.approval
        };
        let mut events = self.events;
        for event in other.events {
            if !events.iter().any(|e| e.event_id == event.event_id) {
                events.push(event);
            }
        }
        Row { approval, events }
    }

    /// `rows` with each approval once, its views merged, in first-seen order. A visibility walk
    /// over several server pages can return an execution twice: one that closed mid-walk moves
    /// from the running section (already returned) to the closed one (not yet reached), and its
    /// audit events and list item were answered twice.
    pub fn united(rows: Vec<Row>) -> Vec<Row> {
        let mut at: HashMap<(TenantId, String), usize> = HashMap::with_capacity(rows.len());
        let mut out: Vec<Row> = Vec::with_capacity(rows.len());
        for row in rows {
            let key = (row.approval.tenant.clone(), row.approval.id.to_string());
            match at.get(&key) {
                Some(&i) => {
                    let seen = std::mem::replace(&mut out[i], row.clone());
                    out[i] = seen.merge(row);
                }
                None => {
                    at.insert(key, out.len());
                    out.push(row);
                }
            }
        }
        out
    }

    /// The row as a reader at `now` sees it: past the deadline it is expired; a decision this
    /// process learned of has its event (the workflow's expiry event shows once it is recorded).
    pub fn seen_at(self, now: Timestamp) -> Row {
        let approval = self.approval.as_of(now);
        let mut events = self.events;
        // A record imported already settled (its import's details say so) was decided
        // elsewhere: its import is its event here, as on Redis. One imported pending and
        // decided since (a migration's replay, even of an earlier decision) gets its event.
        let carried_over = events.iter().any(|e| {
            e.kind == AuditKind::Migrated
                && e.details
                    .get("status")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| s != "pending")
        });
        if let Some(event) = decided_event(&approval).filter(|_| !carried_over) {
            if !events.iter().any(|e| e.event_id == event.event_id) {
                events.push(event);
            }
        }
        if let Some(event) = ended_event(&approval) {
            if !events.iter().any(|e| e.kind == AuditKind::Expired) {
                events.push(event);
            }
        }
        Row { approval, events }
    }
}

pub struct Recent {
    enabled: bool,
    rows: Mutex<HashMap<(TenantId, String), (Instant, Row)>>,
    /// Decision-log events this process recorded (`record`), by tenant and event id: they
    /// belong to no approval, so they are kept apart from the rows (list, stats and scan never
    /// see them; only `audit` merges them).
    logged: Mutex<HashMap<(TenantId, String), (Instant, AuditEvent)>>,
    /// When each row was (last) remembered, by the wall clock: scans compare it to their start.
    stamps: Mutex<HashMap<(TenantId, String), Timestamp>>,
}

impl Recent {
    /// `enabled = false` turns the overlay off: every read is plain visibility, as another
    /// process sees it.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            rows: Mutex::default(),
            logged: Mutex::default(),
            stamps: Mutex::default(),
        }
    }

    /// Remembers a decision-log event this process recorded.
    pub fn remember_logged(&self, event: AuditEvent) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        logged.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_FOR);
        logged.insert((event.tenant.clone(), event.event_id.clone()), (now, event));
    }

    /// `visible` (the decision-log events visibility returned for `tenant`) with the ones this
    /// process recorded lately merged in, each once.
    pub fn overlay_logged(&self, tenant: &TenantId, visible: Vec<AuditEvent>) -> Vec<AuditEvent> {
        let now = Instant::now();
        let mut recent: HashMap<String, AuditEvent> = {
            let logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            logged
                .iter()
                .filter(|((t, _), (at, _))| t == tenant && now.duration_since(*at) < REMEMBER_FOR)
                .map(|((_, id), (_, event))| (id.clone(), event.clone()))
                .collect()
        };
        let mut out: Vec<AuditEvent> = visible
            .into_iter()
            .inspect(|event| {
                recent.remove(&event.event_id);
            })
            .collect();
        out.extend(recent.into_values());
        out
    }

    pub fn remember(&self, row: Row) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let key = (row.approval.tenant.clone(), row.approval.id.to_string());
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_FOR);
        let merged = match rows.remove(&key) {
            Some((_, known)) => known.merge(row),
            None => row,
        };
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        stamps.retain(|key, _| rows.contains_key(key));
        stamps.insert(key.clone(), Timestamp::now());
        rows.insert(key, (now, merged));
    }

    /// A scan's first page: every row remembered up to `started` (the scan's start).
    pub fn scan_head(&self, started: Timestamp) -> Vec<Row> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter()
            .filter(|(key, (at, _))| {
                at.elapsed() < REMEMBER_FOR && stamps.get(*key).is_some_and(|t| *t <= started)
            })
            .map(|(_, (_, row))| row.clone())
            .collect()
    }

    /// A visibility row of a scan that started at `started`: `None` if the scan's first page
    /// already carried it (see [`Recent::scan_head`]), else the row, refreshed.
    pub fn scan_row(&self, row: Row, started: Timestamp) -> Option<Row> {
        let key = (row.approval.tenant.clone(), row.approval.id.to_string());
        let stamped = {
            let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            stamps.get(&key).copied()
        };
        match stamped {
            Some(t) if t <= started && self.refresh_known(&key) => None,
            _ => Some(self.refresh(row)),
        }
    }

    fn refresh_known(&self, key: &(TenantId, String)) -> bool {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.get(key)
            .is_some_and(|(at, _)| at.elapsed() < REMEMBER_FOR)
    }

    /// One visibility row with what this process knows of it merged in (no rows added).
    pub fn refresh(&self, row: Row) -> Row {
        let key = (row.approval.tenant.clone(), row.approval.id.to_string());
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        match rows.get(&key) {
            Some((at, known)) if at.elapsed() < REMEMBER_FOR => row.merge(known.clone()),
            _ => row,
        }
    }

    /// `visible` with this process's recent writes merged in; `wanted` selects which remembered
    /// rows the query would have matched (by tenant).
    pub fn overlay(&self, visible: Vec<Row>, wanted: impl Fn(&TenantId) -> bool) -> Vec<Row> {
        let now = Instant::now();
        let mut recent: HashMap<(TenantId, String), (Instant, Row)> = {
            let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            rows.iter()
                .filter(|((tenant, _), (at, _))| {
                    now.duration_since(*at) < REMEMBER_FOR && wanted(tenant)
                })
                .map(|(key, (at, row))| (key.clone(), (*at, row.clone())))
                .collect()
        };
        let mut out: Vec<Row> = visible
            .into_iter()
            .map(|row| {
                let key = (row.approval.tenant.clone(), row.approval.id.to_string());
                match recent.remove(&key) {
                    Some((_, known)) => row.merge(known),
                    None => row,
                }
            })
            .collect();
        out.extend(recent.into_values().filter_map(|(at, row)| {
            (row.approval.is_decided() || now.duration_since(at) < PENDING_UNSEEN_FOR)
                .then_some(row)
        }));
        out
    }
}
