//! `testfleet coordinator`: serves the fleet until SIGTERM or Ctrl-C.

use std::sync::Arc;

use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_model::exit_code;

use crate::args::CoordinatorArgs;
use crate::error::{CliError, CliResult};

pub async fn run(args: CoordinatorArgs) -> CliResult<i32> {
    let store = SledStore::open(&args.data_dir)
        .map_err(|e| CliError::Server(e.to_string()))?
        .with_retention(args.keep_runs);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Server(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Internal(e.into()))?;
    let mut config = CoordinatorConfig::new(&args.data_dir);
    config.scheduler.default_retries = args.default_retries;
    config.scheduler.service_grace = std::time::Duration::from_secs_f64(args.service_grace);
    config.scheduler.lease_timeout = std::time::Duration::from_secs_f64(args.lease_timeout);
    config.max_bundle_bytes = args.max_bundle_bytes;
    // Scripts (and tests binding port 0) read the address from this first line of stdout.
    println!("testfleet coordinator listening on {addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "coordinator started");
    testfleet_coordinator::serve(listener, config, Arc::new(store), super::termination())
        .await
        .map_err(|e| CliError::Server(e.to_string()))?;
    tracing::info!("coordinator stopped");
    Ok(exit_code::SUCCESS)
}
