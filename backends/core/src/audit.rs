//! Audit events: the per-tenant history of what happened to each approval.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::{ApprovalId, TenantId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Submitted,
    Accepted,
    Rejected,
    Expired,
    Migrated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Unique within the tenant and increasing with time.
    pub event_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
    #[schema(value_type = String)]
    pub tenant: TenantId,
    #[schema(value_type = String)]
    pub approval_id: ApprovalId,
    pub kind: AuditKind,
    /// Who caused it: a token subject, or `system` for expiries.
    pub actor: String,
    /// Kind-specific facts: the policy decision and reasons, a decision reason, ...
    #[schema(value_type = Object)]
    pub details: Value,
}
