//! What the commands that run agents share: this binary's helper processes (the guard, the
//! sandbox helper), how servers learn to stop, default parallelism, and short stable names.

/// The hidden subcommand an agent starts as its sandbox helper.
pub(crate) const SANDBOX_HELPER: &str = "__sandbox";

/// Starts this binary as the guard of the agents in this process (see `testfleet_agent::guard`);
/// without one, a killed agent's tests are only swept when it starts again.
pub(crate) fn start_guard() -> testfleet_agent::guard::Guard {
    let started = std::env::current_exe()
        .and_then(|exe| testfleet_agent::guard::Guard::start(&exe, "__guard"));
    started.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not start the guard process: tests of a killed agent will run on until it restarts");
        Default::default()
    })
}

/// Tests of remote runs start in a namespace of their own that hides the agent's work dir, token
/// file and TLS key (see `testfleet_agent::sandbox`); where this machine does not allow one, the
/// agent says so and runs without.
pub(crate) async fn sandbox_launcher(
    off: bool,
    work_dir: &std::path::Path,
    connect: &crate::security_args::ConnectArgs,
) -> testfleet_agent::sandbox::Launcher {
    use testfleet_agent::sandbox::Launcher;
    if off {
        return Launcher::off("turned off with --no-sandbox");
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Launcher::off(&format!("cannot find the testfleet binary: {e}")),
    };
    let _ = std::fs::create_dir_all(work_dir);
    let work_dir = work_dir.canonicalize().unwrap_or(work_dir.to_path_buf());
    let hide = std::iter::once(work_dir.clone())
        .chain(connect.token_file.iter().cloned())
        .chain(connect.tls_key.iter().cloned())
        .map(|p| p.canonicalize().unwrap_or(p))
        .collect();
    let scratch = work_dir.join("sandboxes").join(".probe");
    let launcher = Launcher::probe(&exe, SANDBOX_HELPER, &scratch, hide).await;
    if launcher.available() {
        tracing::info!("tests of remote runs run in a private mount and PID namespace");
    } else {
        tracing::warn!(
            reason = launcher.status(),
            "no sandbox: tests of remote runs see the agent's files, and paths compiled into them do not hold"
        );
    }
    launcher
}

/// Resolves on SIGTERM or SIGINT: how servers learn to stop. The handlers are installed now, not
/// when the future is first polled, so a signal during start-up (a sweep, a bind) is not fatal.
pub(crate) fn termination() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler succeeds");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler succeeds");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

pub(crate) fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// FNV-1a: a short, stable hash for names made from paths and keys (not for security).
pub(crate) fn short_hash(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
