//! What a use case can answer instead of its result. Each variant is something a caller can
//! act on; the HTTP layer maps them to problem documents with stable codes.

use approvals_core::{Approval, ApprovalId, BackendError, BoxError, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A tenant or approval id that does not match its pattern.
    #[error("{0}")]
    InvalidIdentifier(String),
    /// What the caller asked to do is malformed (an action without a type, a long reason).
    #[error("{0}")]
    InvalidContent(String),
    /// How the caller asked is malformed (a limit out of range, a foreign cursor).
    #[error("{0}")]
    InvalidOption(String),
    /// What the caller sent is beyond the input limits (`[limits]`); the policy never saw it.
    #[error("{0}")]
    InputTooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("you submitted this approval; another reviewer must decide it")]
    SelfApproval,
    #[error("no approval {id} in tenant {tenant}")]
    NotFound { tenant: TenantId, id: ApprovalId },
    #[error("request_id {0} exists with a different action, context or agent_id")]
    RequestIdConflict(ApprovalId),
    /// The tenant holds `approvals.max_event_streams_per_tenant` live streams on this instance,
    /// or the caller a fifth of them.
    #[error(
        "too many live event streams open on this instance: tenant {tenant} has {open}, and one \
         caller may hold a fifth of the tenant's limit"
    )]
    TooManyStreams { tenant: TenantId, open: usize },
    /// The tenant has as many pending approvals as it may (`approvals.max_pending_per_tenant`).
    #[error("tenant {tenant} has {pending} pending approvals, its limit; decide some first")]
    TooManyPending { tenant: TenantId, pending: u64 },
    #[error("the approval is already {}", .0.status.as_str())]
    AlreadyDecided(Box<Approval>),
    #[error("the approval expired at {}", .0.expires_at)]
    Expired(Box<Approval>),
    /// An uploaded bundle was refused: every compiler message and failing test.
    #[error("the policy bundle is invalid")]
    PolicyInvalid(Vec<String>),
    #[error("tenant {tenant} has no policy bundle {version}")]
    PolicyVersionNotFound { tenant: TenantId, version: String },
    /// A rollback with no earlier version to return to.
    #[error("tenant {0} has no earlier policy version to roll back to")]
    NoEarlierPolicy(TenantId),
    /// Another change to the tenant's policy won; re-read and retry.
    #[error("tenant {0}'s policy changed meanwhile; read it again and retry")]
    PolicyChanged(TenantId),
    /// The caller's `If-Match` names a state the tenant's policy is no longer in: what the
    /// change was decided on is stale (or a retried change already took effect). `current` is
    /// the state's entity tag.
    #[error(
        "tenant {tenant}'s policy is now \"{current}\", not the state If-Match names; read it \
         again (its ETag) before changing it"
    )]
    PolicyPreconditionFailed { tenant: TenantId, current: String },
    /// This deployment keeps no tenant bundles (Temporal answers, no Redis tenant store).
    #[error(
        "this deployment keeps no tenant policy bundles: they live in Redis, and Temporal \
         answers here without tenant_store.kind = \"redis\""
    )]
    PolicyStoreDisabled,
    /// This instance could not load the tenant's own bundle (not readable or not compiling
    /// here), and had none of it before: the platform default must not answer in its place.
    /// (Not having read the tenants' policies at all is `Unavailable`.)
    #[error("this tenant's own policy bundle cannot be loaded on this instance yet")]
    PolicyNotLoaded,
    /// An upload could not be validated: this instance cannot start a policy sandbox.
    #[error("this instance cannot validate policy bundles now: {0}")]
    PolicySandboxUnavailable(String),
    /// Webhooks are kept in Redis; Temporal answers here and no Redis tenant store is set.
    #[error(
        "this deployment keeps no webhooks: they live in Redis, and Temporal answers here \
         without tenant_store.kind = \"redis\""
    )]
    WebhooksDisabled,
    /// This instance validates one upload per tenant at a time; another is under way.
    #[error(
        "tenant {0} has a policy upload under way on this instance; retry once it is answered"
    )]
    UploadInProgress(TenantId),
    #[error("tenant {tenant} already has {max} webhooks, its limit")]
    TooManyWebhooks { tenant: TenantId, max: usize },
    /// A webhook URL whose host is not a public address nor in
    /// `notifications.allowed_networks`.
    #[error("{0}")]
    WebhookDestinationForbidden(String),
    #[error("tenant {tenant} has no webhook {id}")]
    WebhookNotFound { tenant: TenantId, id: String },
    /// The stored action no longer matches the digest it was parked with: the record changed
    /// after parking, and is not to be obeyed.
    #[error("approval {id} in tenant {tenant} does not match the action it was parked with")]
    ActionMismatch { tenant: TenantId, id: ApprovalId },
    /// The engine cannot be reached or did not answer in time; worth retrying.
    #[error("the approval store is unavailable")]
    Unavailable(#[source] BackendError),
    /// `/readyz` after SIGTERM: this instance is leaving the load balancer.
    #[error("this instance is shutting down; another instance answers")]
    ShuttingDown,
    /// A fault of this service or its data, not of the request.
    #[error("internal error")]
    Internal(#[source] BoxError),
}
