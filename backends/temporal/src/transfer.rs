//! Whole records in and out of Temporal, for `approvals migrate` and the dual soak: the scan
//! pages through visibility; an import starts a workflow whose first event says it was
//! carried over.

use approvals_core::{Approval, BackendError, ImportOutcome, RecordTransfer, ScanPage, Timestamp};
use async_trait::async_trait;
use temporalio_client::grpc::WorkflowService;
use temporalio_client::tonic::IntoRequest;
use temporalio_client::WorkflowExecutionStatus;
use temporalio_common::protos::temporal::api::enums::v1::WorkflowExecutionStatus as RawStatus;
use temporalio_common::protos::temporal::api::workflowservice::v1::ListWorkflowExecutionsRequest;

use crate::backend::{as_closed, memo_field, TemporalBackend, WORKFLOW_TYPE};
use crate::cursor;
use crate::recent::Row;
use crate::record::ApprovalRecord;
use crate::workflow::{Origin, MEMO_APPROVAL};

#[async_trait]
impl RecordTransfer for TemporalBackend {
    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError> {
        let (started, token) = match cursor {
            Some(cursor) => {
                let (ms, token) = cursor::decode_scan(cursor)?;
                (Timestamp::from_millis(ms), token)
            }
            None => (Timestamp::now(), Vec::new()),
        };
        let request = ListWorkflowExecutionsRequest {
            namespace: self.settings.namespace.clone(),
            page_size: i32::try_from(batch.clamp(1, 1000)).unwrap_or(1000),
            next_page_token: token,
            query: format!("WorkflowType = '{WORKFLOW_TYPE}'"),
        };
        let mut client = self.client.clone();
        let resumed = cursor.is_some();
        let response = self
            .call("scan", self.settings.call_timeout, async move {
                WorkflowService::list_workflow_executions(&mut client, request.into_request())
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|status| match status.code() {
                        // The page token is the only argument a caller gives: refused, it is
                        // the cursor's fault. A first page refused is the server's (a
                        // visibility store that cannot run the query), not the caller's.
                        temporalio_client::tonic::Code::InvalidArgument if resumed => {
                            BackendError::InvalidCursor
                        }
                        _ => BackendError::unavailable("scan", status),
                    })
            })
            .await?;
        let now = Timestamp::now();
        let mut items = Vec::with_capacity(response.executions.len());
        if cursor.is_none() {
            // This process's recent writes, which visibility may not show yet; the pages
            // below skip them.
            items.extend(
                self.recent
                    .scan_head(started)
                    .into_iter()
                    .map(|row| row.approval.as_of(now)),
            );
        }
        let mut unreadable = Vec::new();
        for execution in response.executions {
            let key = execution
                .execution
                .as_ref()
                .map(|e| e.workflow_id.clone())
                .unwrap_or_default();
            let fields = execution.memo.unwrap_or_default().fields;
            // One unreadable memo is reported and passed over, as Redis does with a value:
            // failing the scan would stop every migration at the same record.
            let record: ApprovalRecord = match memo_field(&key, &fields, MEMO_APPROVAL) {
                Ok(record) => record,
                Err(BackendError::Corrupt { key, reason }) => {
                    tracing::warn!(key, reason, "unreadable workflow memo passed over");
                    unreadable.push(key);
                    continue;
                }
                Err(other) => return Err(other),
            };
            // As every other read sees it: ended undecided, it is expired (see `as_closed`).
            let status = RawStatus::try_from(execution.status).map_or(
                WorkflowExecutionStatus::Unknown,
                WorkflowExecutionStatus::from,
            );
            let closed_at = execution.close_time.as_ref().map(|t| {
                Timestamp::from_millis(t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000)
            });
            let row = Row {
                approval: as_closed(record.into(), status, closed_at),
                events: Vec::new(),
            };
            if let Some(row) = self.recent.scan_row(row, started) {
                items.push(row.approval.as_of(now));
            }
        }
        let next = (!response.next_page_token.is_empty())
            .then(|| cursor::encode_scan(started.as_millis(), &response.next_page_token));
        Ok(ScanPage {
            items,
            next,
            unreadable,
        })
    }

    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError> {
        let origin = Origin::Imported {
            at: Timestamp::now(),
        };
        Ok(
            if self
                .start(&approval, origin, None, self.settings.call_timeout)
                .await?
            {
                ImportOutcome::Imported
            } else {
                ImportOutcome::AlreadyPresent
            },
        )
    }
}
