//! One module per subcommand; each returns the process exit code.

mod agent;
mod agents;
mod coordinator;
mod query;
mod run;

use crate::args::{Cli, Command};
use crate::error::{CliError, CliResult};

pub fn run(cli: Cli) -> CliResult<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(e.into()))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Coordinator(args) => coordinator::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Agents(args) => agents::run(args).await,
            Command::Flaky(args) => query::flaky(args).await,
            Command::Timings(args) => query::timings(args).await,
            Command::History(args) => query::history(args).await,
            Command::Runs(args) => query::runs(args).await,
            Command::Quarantine(cmd) => query::quarantine(cmd).await,
        }
    })
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
