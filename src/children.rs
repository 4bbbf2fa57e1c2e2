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
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec only `prctl` and `getppid`, plain syscalls, run; no
        // allocation, no lock.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
                // A parent that died before the line above never sends the signal: the child
                // would outlive it. Then it does not start.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(
                        nix::errno::Errno::ESRCH as i32,
                    ));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
