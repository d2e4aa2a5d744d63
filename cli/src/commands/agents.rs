//! `testfleet agents`: who is connected to a coordinator.

use testfleet_model::exit_code;
use testfleet_proto::pb;

use crate::answer::say;
use crate::args::AgentsArgs;
use crate::error::{CliError, CliResult};

/// "3 in 12.4s, 1 failed": pulls since the agent connected, apart from container starts.
fn pulls(a: &pb::AgentInfo) -> String {
    let mut s = format!("{} in {:.1}s", a.pulls, a.pull_ms as f64 / 1000.0);
    if a.pull_failures > 0 {
        s.push_str(&format!(", {} failed", a.pull_failures));
    }
    s
}

pub async fn run(args: AgentsArgs) -> CliResult<i32> {
    let mut client = crate::remote::connect(
        &args.coordinator,
        &args.connect.security()?,
        args.connect.wait(),
    )
    .await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(|s| CliError::from_status(&args.coordinator, s))?
        .into_inner()
        .agents;
    if args.json {
        for a in &agents {
            let line = serde_json::json!({
                "agent_id": a.agent_id,
                "slots": a.slots,
                "busy": a.busy,
                "docker_available": a.docker_available,
                "docker_status": a.docker_status,
                "sandbox_status": a.sandbox_status,
                "version": a.version,
                "labels": a.labels,
                "images": a.images,
                "pulls": a.pulls,
                "pull_ms": a.pull_ms,
                "pull_failures": a.pull_failures,
            });
            say!("{line}");
        }
    } else {
        say!(
            "{:<32} {:>5} {:>5}  {:<8} {:<8} {:>6}  {:<20} VERSION",
            "AGENT",
            "SLOTS",
            "BUSY",
            "DOCKER",
            "SANDBOX",
            "IMAGES",
            "PULLS"
        );
        let mut unsandboxed = vec![];
        for a in &agents {
            say!(
                "{:<32} {:>5} {:>5}  {:<8} {:<8} {:>6}  {:<20} {}",
                a.agent_id,
                a.slots,
                a.busy,
                if a.docker_available { "yes" } else { "no" },
                if a.sandbox_status.is_empty() {
                    "yes"
                } else {
                    "no"
                },
                a.images,
                pulls(a),
                a.version
            );
            if !a.sandbox_status.is_empty() {
                unsandboxed.push(a);
            }
        }
        // Why an agent runs tests without a private namespace matters to whoever reads this list.
        for a in unsandboxed {
            say!("{}: no sandbox: {}", a.agent_id, a.sandbox_status);
        }
    }
    Ok(exit_code::SUCCESS)
}
