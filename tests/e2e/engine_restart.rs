//! An agent's Docker engine restarting under it, as the agent sees it through a socket proxy
//! (restarting the machine's engine would disturb every other test): the containers the engine
//! ran are killed behind the agent's back. A test that then fails without its service is an
//! infrastructure error, retried with a new container; an engine that stops answering is noticed
//! by the agent's probe, waited for, swept when it is back; nothing is left behind.

use testfleet_model::EventKind;

use crate::docker_proxy::DockerProxy;
use crate::fixture;
use crate::support::*;

/// Kills `agent`'s containers on the real engine, as an engine that restarts does.
fn kill_containers_of(agent: &str) {
    let label = format!("label=testfleet.agent={agent}");
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &label])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        docker(&["kill", id]);
    }
}

/// The agent-scope tests on the coordinator at `url`: every one must pass; returns the events.
fn agent_scope_run(url: &str) -> Vec<testfleet_model::RunEvent> {
    all_passed(&run_remote(url, &fixture::services_manifest(), &["agent_"]))
}

#[test]
fn an_engine_that_restarts_under_the_agent_costs_retries_not_failures() {
    if !docker_or_skip("an_engine_that_restarts_under_the_agent_costs_retries_not_failures") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = DockerProxy::open(&dir.path().join("docker.sock"));
    let id = unique("restarted");
    let (_coord, url) = coordinator(dir.path());
    let mut cmd = agent_command(dir.path(), &url, &id, 1);
    cmd.env("DOCKER_HOST", proxy.url());
    let mut agent = Proc::spawn(cmd, dir.path().join("agent.log"));
    wait_for_agents(&url, 1);

    // The agent-scope service starts once and serves the four tests.
    let first = agent_scope_run(&url);
    assert!(infra_attempts(&first).is_empty());

    // The engine restarts faster than the agent's probe looks: the service's container is gone,
    // the agent does not know. The test that finds it gone is an infrastructure error, retried
    // with a new container; nothing counts as a failure.
    kill_containers_of(&id);
    let second = agent_scope_run(&url);
    let infra = infra_attempts(&second);
    assert_eq!(infra.len(), 1, "{infra:?}");
    assert!(
        infra[0].contains("service `agent-svc`'s container")
            && infra[0].contains("no longer running")
            && infra[0].contains("its failure is not counted"),
        "{}",
        infra[0]
    );
    let s = summary(&second);
    assert_eq!((s.passed, s.failed, s.infra_errors), (4, 0, 0), "{s:?}");

    // The engine stops answering long enough for the probe: the agent says so and forgets its
    // containers; when the engine is back, what the old one left is swept, and the next run
    // starts its service anew with no error at all.
    proxy.close();
    kill_containers_of(&id);
    wait_until("the agent noticing the engine went away", || {
        agent.log().contains("the Docker engine went away")
    });
    proxy.reopen();
    wait_until("the agent noticing the engine is back", || {
        agent.log().contains("the Docker engine is back")
    });
    let third = agent_scope_run(&url);
    assert!(
        infra_attempts(&third).is_empty(),
        "{:?}",
        infra_attempts(&third)
    );
    let starts = third
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::ServiceStarted { .. }))
        .count();
    assert_eq!(starts, 1, "a new agent-scope container");

    assert!(agent.stop().success(), "{}", agent.log());
    assert_eq!(leftovers(&id), Vec::<String>::new());
}
