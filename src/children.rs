//! Child processes the service starts (`approvals dev`'s redis-server, the policy sandboxes)
//! end with it, however it ends.

/// Linux: the child gets SIGKILL when the thread that started it ends, which for the callers
/// here (the runtime's threads, the evaluation threads) is when the process does, even by
/// `kill -9`, where no drop or signal handler runs. Elsewhere it is stopped on the usual paths
/// only (ctrl-c, SIGTERM, drop).
pub(crate) fn die_with_this_process(command: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only `prctl`, a plain syscall, runs; no allocation, no
        // lock.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
