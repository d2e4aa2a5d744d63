//! `testfleet agent`: runs tests for a coordinator until SIGTERM or Ctrl-C.

use std::path::Path;

use testfleet_agent::{AgentConfig, Stop};
use testfleet_model::{AgentId, exit_code};

use crate::args::AgentArgs;
use crate::error::{CliError, CliResult};

/// The agent's name: given, or kept in the work dir so that a restarted agent is the same agent.
fn agent_id(given: Option<&str>, work_dir: &Path) -> CliResult<AgentId> {
    if let Some(id) = given {
        return id.parse().map_err(|e| CliError::Server(format!("{e}")));
    }
    let file = work_dir.join("agent-id");
    if let Ok(saved) = std::fs::read_to_string(&file) {
        return saved
            .trim()
            .parse()
            .map_err(|e| CliError::Server(format!("{} holds an {e}", file.display())));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".to_owned());
    let id = format!("{host}-{:06x}", fastrand::u32(..0x100_0000));
    std::fs::create_dir_all(work_dir)
        .and_then(|()| std::fs::write(&file, &id))
        .map_err(|e| CliError::Server(format!("cannot write {}: {e}", file.display())))?;
    id.parse().map_err(|e| CliError::Server(format!("{e}")))
}

pub async fn run(args: AgentArgs) -> CliResult<i32> {
    let id = agent_id(args.agent_id.as_deref(), &args.work_dir)?;
    let slots = args.slots.unwrap_or_else(crate::process::default_slots);
    if slots == 0 {
        return Err(CliError::Server("--slots must be at least 1".into()));
    }
    let mut config = AgentConfig::new(
        args.coordinator.clone(),
        id.clone(),
        slots,
        args.work_dir.clone(),
    );
    config.guard = crate::process::start_guard();
    config.bundle_retention = (args.bundle_cache_hours > 0)
        .then(|| std::time::Duration::from_secs(u64::from(args.bundle_cache_hours) * 3600));
    config.min_free_bytes = args.min_free_bytes;
    config.security = args.connect.security()?;
    config.sandbox =
        crate::process::sandbox_launcher(args.no_sandbox, &args.work_dir, &args.connect).await;
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::Server(format!("label `{l}` is not KEY=VALUE")))?;
        config.labels.insert(k.to_owned(), v.to_owned());
    }
    tracing::info!(agent = %id, slots, coordinator = %args.coordinator, "agent started");
    let provisioner: Option<std::sync::Arc<dyn testfleet_agent::provision::Provisioner>> =
        if args.no_docker {
            None
        } else {
            Some(std::sync::Arc::new(
                testfleet_agent::provision::DockerProvisioner::with_pulls(
                    testfleet_agent::provision::PullDefaults {
                        policy: args.pull,
                        timeout: std::time::Duration::from_secs_f64(args.pull_timeout),
                    },
                ),
            ))
        };
    // The first SIGTERM or Ctrl-C drains (running tests finish, the rest goes back); a second one
    // stops the running tests too.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Running);
    let first = crate::process::termination();
    tokio::spawn(async move {
        first.await;
        tracing::info!(
            "draining: finishing running tests, giving back the rest (signal again to stop now)"
        );
        let _ = stop_tx.send(Stop::Drain);
        crate::process::termination().await;
        let _ = stop_tx.send(Stop::Now);
    });
    testfleet_agent::run(config, provisioner, stop_rx)
        .await
        .map_err(|e| CliError::Server(e.to_string()))?;
    tracing::info!(agent = %id, "agent stopped");
    Ok(exit_code::SUCCESS)
}
