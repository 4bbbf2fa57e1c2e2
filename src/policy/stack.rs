//! Threads with a known stack for compiling and evaluating Rego. regorus bounds a policy's
//! nesting, but a long chain (`1 + 1 + … + 1`, a few kB on some lines) becomes a tree as deep
//! as it is long, which its analysis walks recursively: past the thread's stack the process
//! aborts, with no panic to catch. Tenant bundles are validated and evaluated in a sandbox
//! child on [`SANDBOX_STACK`] (a bundle needing more kills the child, and its upload is
//! refused); the service compiles what passed on [`SERVICE_STACK`], four times that, so no
//! stored bundle can abort it. On tokio's 2 MiB blocking threads, a bundle that the child's
//! 8 MiB main thread had accepted aborted every instance that activated it, at each restart.

/// The stack a sandbox child validates, compiles and evaluates tenant bundles on.
pub const SANDBOX_STACK: usize = 16 << 20;

/// The stack the service compiles bundles on (and evaluates them on, without the sandbox).
pub const SERVICE_STACK: usize = 4 * SANDBOX_STACK;

/// Runs `work` on a thread of its own with [`SANDBOX_STACK`] and waits for it: `approvals
/// policy test` and `eval`, on the main thread (8 MiB, or whatever `ulimit -s` says), aborted
/// on a bundle the service's sandbox accepts. `Err` if the thread could not start or panicked.
pub fn on_sandbox_stack<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("policy".into())
            .stack_size(SANDBOX_STACK)
            .spawn_scoped(scope, work)
            .map_err(|e| format!("cannot start a policy thread: {e}"))?
            .join()
            .map_err(|_| "the policy thread panicked".to_owned())
    })
}

/// Runs `work` on a thread of its own with [`SERVICE_STACK`] and waits for its result
/// without holding a runtime worker. `Err` if the thread could not start or panicked.
pub async fn on_service_stack<T, F>(name: &str, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (answer, answered) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(SERVICE_STACK)
        .spawn(move || {
            let _ = answer.send(work());
        })
        .map_err(|e| format!("cannot start a policy thread: {e}"))?;
    answered
        .await
        .map_err(|_| "the policy thread panicked".to_owned())
}
