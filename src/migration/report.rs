//! The reconciliation report a migration ends with: per tenant and status, the counts on both
//! sides, and every difference by id. Printed as a table, or as JSON for scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use approvals_core::{Approval, ApprovalId, Status, TenantId};
use serde::Serialize;

/// Differences listed by id, at most: a dry run against an empty target finds every record
/// missing, and a million listed lines (and their memory) help nobody. All are counted.
pub const LISTED_DIFFERENCES: usize = 1_000;

/// Records whose calls keep failing before a run stops early: past this many, a side is most
/// likely down, and going on would only add a few seconds of retries per record.
pub const MAX_FAILED_RECORDS: usize = 100;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub imported: u64,
    pub already_present: u64,
    /// Dry run: records the copy pass would import.
    pub would_import: u64,
    /// Decisions made in the source after their approval was copied, replayed on the target.
    pub decisions_replayed: u64,
    /// With the target answering: its decisions the source (the soak's secondary) missed,
    /// replayed on the source, as a read through the service would repair it, and its records
    /// the source never got, copied there.
    pub source_repaired: u64,
    /// Dry run: what a real run would replay or copy on the source (`source_repaired`).
    pub would_repair_source: u64,
    /// Records one side holds that the other, by its own retention, no longer keeps (engines
    /// keep settled records for different times): not copied, not differences, not counted
    /// in `counts`.
    pub past_retention: Sides,
    /// tenant → status → records on each side.
    pub counts: BTreeMap<String, BTreeMap<Status, Sides>>,
    /// The first [`LISTED_DIFFERENCES`] differences found.
    pub differences: Vec<Difference>,
    /// Every difference found, listed or not.
    pub differences_total: u64,
    /// Keys of records a side holds but could not read: neither copied nor compared.
    pub unreadable: Unreadable,
    /// Records a call kept failing on after its retries (at most [`MAX_FAILED_RECORDS`]),
    /// passed over and left as they were.
    pub failed: Vec<FailedRecord>,
    /// The run stopped at [`MAX_FAILED_RECORDS`] failed records: what follows them was not
    /// copied or compared, and the counts are partial.
    pub stopped_early: bool,
    /// What stopped the run before its end (a scan that kept failing): the counts are partial.
    pub stopped_by: Option<String>,
}

/// A record a call of the migration kept failing on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRecord {
    pub tenant: TenantId,
    pub id: ApprovalId,
    /// `copy` or `reconcile`.
    pub pass: &'static str,
    /// The error, with its causes.
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Unreadable {
    pub source: BTreeSet<String>,
    pub target: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sides {
    pub source: u64,
    pub target: u64,
}

/// One approval that is not the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub tenant: String,
    pub id: String,
    /// `None`: the side has no such record.
    pub source_status: Option<Status>,
    pub target_status: Option<Status>,
    /// The fields that differ when both sides have it.
    pub fields: Vec<String>,
}

impl Report {
    pub fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            ..Self::default()
        }
    }

    /// True when both sides hold the same records, every one of them read.
    pub fn is_reconciled(&self) -> bool {
        self.differences_total == 0
            && self.unreadable.source.is_empty()
            && self.unreadable.target.is_empty()
            && self.failed.is_empty()
            && !self.stopped_early
    }

    /// Counts a source record and its copy (as of the same instant), noting any difference.
    pub(super) fn compare(&mut self, source: Approval, copy: Option<Approval>) {
        self.side(&source).source += 1;
        let fields = match &copy {
            Some(copy) => {
                self.side(copy).target += 1;
                differing_fields(&source, copy)
            }
            None => Vec::new(),
        };
        if copy.is_none() || !fields.is_empty() {
            self.differ(Difference {
                tenant: source.tenant.to_string(),
                id: source.id.to_string(),
                source_status: Some(source.status),
                target_status: copy.map(|c| c.status),
                fields,
            });
        }
    }

    /// A record the target has and the source does not.
    pub(super) fn only_in_target(&mut self, copy: Approval) {
        self.side(&copy).target += 1;
        self.differ(Difference {
            tenant: copy.tenant.to_string(),
            id: copy.id.to_string(),
            source_status: None,
            target_status: Some(copy.status),
            fields: Vec::new(),
        });
    }

    fn differ(&mut self, difference: Difference) {
        self.differences_total += 1;
        if self.differences.len() < LISTED_DIFFERENCES {
            self.differences.push(difference);
        }
    }

    fn side(&mut self, approval: &Approval) -> &mut Sides {
        self.counts
            .entry(approval.tenant.to_string())
            .or_default()
            .entry(approval.status)
            .or_default()
    }
}

/// Top-level fields whose values differ, by their names in the API.
fn differing_fields(a: &Approval, b: &Approval) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["<unserializable>".into()];
    };
    a.iter()
        .filter(|(key, value)| b.get(*key) != Some(*value))
        // What the source does not know, its replay had to fill in: an ADR v1 decision says
        // neither when nor who. Counted, the run never ended clean.
        .filter(|(key, value)| {
            !(value.is_null() && matches!(key.as_str(), "decided_at" | "decided_by"))
        })
        .map(|(key, _)| key.clone())
        .collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:<9} {:>9} {:>9}",
            "tenant", "status", "source", "target"
        )?;
        for (tenant, statuses) in &self.counts {
            for (status, sides) in statuses {
                let mark = if sides.source == sides.target {
                    ""
                } else {
                    "  *"
                };
                writeln!(
                    f,
                    "{tenant:<32} {:<9} {:>9} {:>9}{mark}",
                    status.as_str(),
                    sides.source,
                    sides.target
                )?;
            }
        }
        if self.dry_run {
            writeln!(
                f,
                "\ndry run: would import {}, already present {}; nothing was copied or replayed",
                self.would_import, self.already_present
            )?;
            if self.would_repair_source > 0 {
                writeln!(
                    f,
                    "would copy to the source the answering target's records and decisions it missed: {}",
                    self.would_repair_source
                )?;
            }
        } else {
            writeln!(
                f,
                "\nimported {}, already present {}, late decisions replayed {}",
                self.imported, self.already_present, self.decisions_replayed
            )?;
            if self.source_repaired > 0 {
                writeln!(
                    f,
                    "records and decisions of the answering target the source had missed, copied to it: {}",
                    self.source_repaired
                )?;
            }
        }
        let Sides { source, target } = self.past_retention;
        if source + target > 0 {
            writeln!(
                f,
                "past retention (settled long enough ago that one side no longer keeps them; not \
                 copied, not differences): {target} only in the source, {source} only in the target"
            )?;
        }
        for (side, keys) in [
            ("source", &self.unreadable.source),
            ("target", &self.unreadable.target),
        ] {
            if !keys.is_empty() {
                writeln!(
                    f,
                    "{} records in the {side} could not be read (passed over; repair or remove \
                     them and run again):",
                    keys.len()
                )?;
                for key in keys {
                    writeln!(f, "  {key}")?;
                }
            }
        }
        if !self.failed.is_empty() {
            writeln!(
                f,
                "{} records failed (passed over, left as they were; run again once the cause \
                 is fixed):",
                self.failed.len()
            )?;
            for failed in &self.failed {
                writeln!(
                    f,
                    "  {}/{} ({}): {}",
                    failed.tenant, failed.id, failed.pass, failed.error
                )?;
            }
        }
        if let Some(error) = &self.stopped_by {
            writeln!(
                f,
                "stopped: {error}: the records after it were not copied or compared, and the \
                 counts above are partial; it is safe to run the same command again (records \
                 already copied are skipped)"
            )?;
        } else if self.stopped_early {
            // The pass that stopped: after a reconcile pass stopped, the copy had been done.
            let not_done = match self.failed.last().map(|f| f.pass) {
                Some("reconcile") => "compared",
                _ => "copied nor compared",
            };
            writeln!(
                f,
                "stopped early after {MAX_FAILED_RECORDS} failures: the records after them \
                 were not {not_done}, and the counts above are partial"
            )?;
        }
        if self.is_reconciled() {
            return writeln!(f, "reconciled: both sides hold the same records");
        }
        if self.differences_total == 0 {
            return Ok(());
        }
        let listed = self.differences.len() as u64;
        if listed < self.differences_total {
            writeln!(
                f,
                "{} differences (the first {listed} listed):",
                self.differences_total
            )?;
        } else {
            writeln!(f, "{} differences:", self.differences_total)?;
        }
        let status = |s: Option<Status>| s.map_or("missing", |s| s.as_str());
        for d in &self.differences {
            write!(
                f,
                "  {}/{}: source {}, target {}",
                d.tenant,
                d.id,
                status(d.source_status),
                status(d.target_status)
            )?;
            if !d.fields.is_empty() {
                write!(f, " (differs in {})", d.fields.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use approvals_core::conformance::{fresh_tenant, pending};

    use super::*;

    /// A dry run against an empty target finds every record missing: all are counted, the
    /// first thousand listed, and the run is not reconciled.
    #[test]
    fn differences_are_all_counted_and_the_first_thousand_listed() {
        let tenant = fresh_tenant("report");
        let mut report = Report::new(true);
        let found = LISTED_DIFFERENCES + 500;
        for n in 0..found {
            let source = pending(&tenant, &format!("a-{n}"), Duration::from_secs(60));
            report.compare(source, None);
        }
        assert_eq!(report.differences_total, found as u64);
        assert_eq!(report.differences.len(), LISTED_DIFFERENCES);
        assert_eq!(report.differences[0].id, "a-0");
        assert!(!report.is_reconciled());
        let printed = report.to_string();
        assert!(
            printed.contains(&format!("{found} differences (the first 1000 listed):")),
            "{printed}"
        );
        assert_eq!(
            printed.matches("target missing").count(),
            LISTED_DIFFERENCES
        );
    }
}
