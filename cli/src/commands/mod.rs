//! One module per subcommand; each returns the process exit code.

mod agent;
mod agents;
mod ci;
mod coordinator;
mod import;
mod query;
mod run;

use crate::args::{Cli, Command};
use crate::error::{CliError, CliResult};

pub fn run(cli: Cli) -> CliResult<i32> {
    if let Command::Guard { token } = &cli.command {
        testfleet_agent::guard::ignore_stop_signals();
        testfleet_agent::guard::serve(std::io::stdin().lock(), token.as_deref());
        return Ok(0);
    }
    if matches!(cli.command, Command::Coordinator(_)) {
        coordinator::before_runtime();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(e.into()))?;
    runtime.block_on(async move {
        // Inside the runtime: the OTLP exporter's channel lives on it.
        let telemetry = crate::telemetry::init(&cli);
        let result = match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Ci(args) => ci::run(args).await,
            Command::Coordinator(args) => coordinator::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Agents(args) => agents::run(args).await,
            Command::Flaky(args) => query::flaky(args).await,
            Command::Timings(args) => query::timings(args).await,
            Command::History(args) => query::history(args).await,
            Command::Runs(args) => query::runs(args).await,
            Command::Quarantine(cmd) => query::quarantine(cmd).await,
            Command::Token => {
                let token = testfleet_security::generate_token()
                    .map_err(|e| CliError::Internal(e.into()))?;
                println!("{token}");
                Ok(0)
            }
            Command::Import(cmd) => import::run(cmd).await,
            Command::Guard { .. } => unreachable!("served above, without a runtime"),
        };
        telemetry.shutdown().await;
        result
    })
}
