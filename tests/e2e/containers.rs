//! Services in real containers on the real Docker engine: scope semantics, exports, timings,
//! cleanup after SIGKILL, and the failures that must be infrastructure errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use testfleet_model::{AttemptStatus, EventKind, RunEvent, Scope, TestFinished, exit_code};

use crate::fixture;
use crate::support::*;

/// (binary, test) → (instance id, lease, agent), from what each fixture test printed.
fn observations(events: &[RunEvent]) -> BTreeMap<(String, String), (String, String, String)> {
    let mut out = BTreeMap::new();
    for e in events {
        if let EventKind::TestFinished(TestFinished { test, result, .. }) = &e.kind {
            assert_eq!(
                result.status,
                AttemptStatus::Passed,
                "{}: {}",
                test.name,
                result.message
            );
            let text = String::from_utf8_lossy(&result.output);
            let line = text
                .lines()
                .find_map(|l| l.split_once("instance-id: ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("{} printed no instance id:\n{text}", test.name));
            let parts: Vec<&str> = line.split_whitespace().collect();
            // "<id> lease: <lease> agent: <agent>"
            out.insert(
                (test.binary_id.to_string(), test.name.to_string()),
                (
                    parts[0].to_owned(),
                    parts[2].to_owned(),
                    parts[4].to_owned(),
                ),
            );
        }
    }
    out
}

fn of_binary<'a>(
    obs: &'a BTreeMap<(String, String), (String, String, String)>,
    binary: &str,
) -> Vec<&'a (String, String, String)> {
    obs.iter()
        .filter(|((b, _), _)| b == binary)
        .map(|(_, v)| v)
        .collect()
}

/// Containers of `agent` with scope label `scope`, running or not.
fn labelled(agent: &str, scope: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=testfleet.agent={agent}"),
        ])
        .args(["--filter", &format!("label=testfleet.scope={scope}")])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn service_starts(events: &[RunEvent], service: &str) -> Vec<(String, Scope)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ServiceStarted {
                service: s,
                agent_id,
                scope,
                ..
            } if s == service => Some((agent_id.clone(), *scope)),
            _ => None,
        })
        .collect()
}

#[test]
fn scopes_share_and_separate_containers_and_nothing_is_left_behind() {
    if !docker_or_skip("scopes_share_and_separate_containers_and_nothing_is_left_behind") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_id, b_id) = (unique("scopes-a"), unique("scopes-b"));
    let (mut coord, url) = coordinator(dir.path());
    let mut a = agent(dir.path(), &url, &a_id, 2);
    let mut b = agent(dir.path(), &url, &b_id, 2);
    wait_for_agents(&url, 2);
    let run = || {
        let out = RunLine::on(&url)
            .json()
            .manifest(&fixture::services_manifest())
            .output();
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{}",
            stderr(&out)
        );
        events(&out)
    };
    let first = run();
    let obs = observations(&first);
    assert_eq!(obs.len(), 12);

    // Agent scope: one container per agent, never shared between agents.
    let agent_scope = of_binary(&obs, "fixture-services::agent_scope");
    let mut ids_per_agent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut agents_per_id: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, _, agent) in &agent_scope {
        ids_per_agent.entry(agent).or_default().insert(id);
        agents_per_id.entry(id).or_default().insert(agent);
    }
    assert_eq!(
        ids_per_agent.len(),
        2,
        "both agents ran agent-scope tests: {agent_scope:?}"
    );
    assert!(
        ids_per_agent.values().all(|ids| ids.len() == 1),
        "{ids_per_agent:?}"
    );
    assert!(
        agents_per_id.values().all(|a| a.len() == 1),
        "{agents_per_id:?}"
    );
    assert_eq!(service_starts(&first, "agent-svc").len(), 2);

    // Lease scope: the tests of one lease share a container, different leases do not.
    let lease_scope = of_binary(&obs, "fixture-services::lease_scope");
    let mut ids_per_lease: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, lease, _) in &lease_scope {
        ids_per_lease.entry(lease).or_default().insert(id);
    }
    assert!(
        ids_per_lease.values().all(|ids| ids.len() == 1),
        "{ids_per_lease:?}"
    );
    let lease_ids: BTreeSet<&str> = lease_scope.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        lease_ids.len(),
        ids_per_lease.len(),
        "one container per lease"
    );
    assert_eq!(
        service_starts(&first, "lease-svc").len(),
        ids_per_lease.len()
    );

    // Test scope: a fresh container for every test.
    let test_ids: BTreeSet<&str> = of_binary(&obs, "fixture-services::test_scope")
        .iter()
        .map(|(id, _, _)| id.as_str())
        .collect();
    assert_eq!(test_ids.len(), 4);
    assert!(
        service_starts(&first, "test-svc")
            .iter()
            .all(|(_, s)| *s == Scope::Test)
    );

    // Start times are reported apart from test times, in the summary too.
    let s = summary(&first);
    assert_eq!(s.service_starts["agent-svc"].count, 2);
    assert_eq!(s.service_starts["test-svc"].count, 4);
    assert!(s.service_starts["agent-svc"].total_ms > 0);

    // Between runs, with the agents still up: lease and test containers are gone already, and
    // each agent keeps exactly its one agent-scope container.
    for agent in [&a_id, &b_id] {
        // A lease's containers go in the background after its last result: wait for that.
        wait_until(
            &format!("removal of agent {agent}'s lease containers"),
            || labelled(agent, "lease") == 0,
        );
        // A test's own container goes before its result is sent.
        assert_eq!(
            labelled(agent, "test"),
            0,
            "agent {agent} kept a test container"
        );
        assert_eq!(
            labelled(agent, "agent"),
            1,
            "agent {agent} has its agent-scope container"
        );
    }

    // A second run reuses each agent's agent-scope container: same ids, no new start.
    let second = run();
    let again = observations(&second);
    let reused = of_binary(&again, "fixture-services::agent_scope");
    assert_eq!(reused.len(), 4);
    for (id, _, agent) in reused {
        let before = ids_per_agent
            .get(agent.as_str())
            .unwrap_or_else(|| panic!("agent {agent} ran no agent-scope test before"));
        assert!(
            before.contains(id.as_str()),
            "agent {agent} reused its container"
        );
    }
    assert!(
        service_starts(&second, "agent-svc").is_empty(),
        "no agent-scope container started again"
    );
    assert_eq!(summary(&second).service_starts["test-svc"].count, 4);

    // The summary with its timings reached sled.
    let run_id = second[0].run_id.to_string();
    for p in [&mut a, &mut b] {
        assert!(p.stop().success(), "{}", p.log());
    }
    assert!(coord.stop().success());
    let store = testfleet_coordinator::SledStore::open(&dir.path().join("coordinator")).unwrap();
    let rec = testfleet_coordinator::HistoryStore::run(&store, run_id.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rec.summary.unwrap().service_starts["test-svc"].count, 4);

    for id in [&a_id, &b_id] {
        assert_eq!(
            leftovers(id),
            Vec::<String>::new(),
            "agent {id} left containers or networks"
        );
    }
}

#[test]
fn a_killed_agent_s_leftovers_are_swept_when_it_returns() {
    if !docker_or_skip("a_killed_agent_s_leftovers_are_swept_when_it_returns") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = unique("phoenix");
    let (_coord, url) = coordinator(dir.path());
    let mut first = agent(dir.path(), &url, &id, 1);
    wait_for_agents(&url, 1);
    let out = run_remote(&url, &fixture::services_manifest(), &["agent_one"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&out)
    );
    // The agent-scope container lives as long as the agent: SIGKILL leaks it...
    assert!(!leftovers(&id).is_empty(), "the agent-scope container runs");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        !leftovers(&id).is_empty(),
        "SIGKILL leaves the container behind"
    );
    // ...and the same agent, started again, removes it before it takes work.
    let mut second = agent(dir.path(), &url, &id, 1);
    wait_until("the sweep of the killed agent's leftovers", || {
        leftovers(&id).is_empty()
    });
    assert!(second.stop().success(), "{}", second.log());
    assert!(
        second
            .log()
            .contains("removed leftovers of an earlier run of this agent"),
        "{}",
        second.log()
    );
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

/// `testfleet run --local 1 --json adds` on the basic fixture, with `manifest` instead of its own.
fn local_run_with(dir: &std::path::Path, manifest: &std::path::Path) -> std::process::Command {
    RunLine::local(1)
        .json()
        .filters(&["adds"])
        .suite_manifest(manifest)
        .data_dir(&dir.join("data"))
        .manifest(&fixture::manifest())
        .command()
}

fn write_manifest(dir: &std::path::Path, image: &str) -> std::path::PathBuf {
    let path = dir.join("testfleet.toml");
    let text = format!(
        "[[service]]\nname = \"ghost\"\nimage = \"{image}\"\npull = \"never\"\nports = [80]\nstartup_timeout = 20\nexports = {{ GHOST = \"{{host}}:{{port:80}}\" }}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_missing_image_that_must_not_be_pulled_is_an_infrastructure_error_that_names_it() {
    if !docker_or_skip(
        "a_missing_image_that_must_not_be_pulled_is_an_infrastructure_error_that_names_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), "testfleet-test/does-not-exist:1");
    let start = Instant::now();
    let out = run_output(&mut local_run_with(dir.path(), &manifest));
    assert_eq!(
        out.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&out)
    );
    let events = events(&out);
    let messages = infra_messages(&events);
    assert_eq!(messages.len(), 2, "{messages:?}");
    for m in &messages {
        assert!(
            m.contains(
                "image `testfleet-test/does-not-exist:1` is not on this agent's Docker engine and its pull policy is `never`"
            ),
            "{m}"
        );
    }
    // Infrastructure errors are never counted as test failures.
    let s = summary(&events);
    assert_eq!((s.failed, s.infra_errors), (0, 2));
    // The only agent failed each test the same way twice: said once, not retried again.
    assert_eq!(s.attempts_per_agent.values().sum::<u32>(), 4, "{s:?}");
    for m in &messages {
        assert!(m.contains("the same error twice on"), "{m}");
    }
    assert!(start.elapsed() < GUARD);
    // The agent's network for its services was made before the start failed; it is gone too.
    for agent in s.attempts_per_agent.keys() {
        assert_eq!(
            leftovers(agent),
            Vec::<String>::new(),
            "agent {agent} left something behind"
        );
    }
}

#[test]
fn unreachable_docker_is_reported_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), "anything:1");
    let out =
        run_output(local_run_with(dir.path(), &manifest).env("DOCKER_HOST", "tcp://127.0.0.1:1"));
    assert_eq!(
        out.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&out)
    );
    let messages = infra_messages(&events(&out));
    assert_eq!(messages.len(), 2, "{messages:?}");
    for m in &messages {
        assert!(m.contains("no connected agent can start services"), "{m}");
        assert!(m.contains("tcp://127.0.0.1:1"), "the cause is named: {m}");
    }
}

#[test]
fn a_run_no_connected_agent_can_serve_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let mut cmd = testfleet();
    cmd.args([
        "agent",
        "--coordinator",
        &url,
        "--agent-id",
        "plain",
        "--no-docker",
        "--work-dir",
    ])
    .arg(dir.path().join("plain"));
    let _plain = Proc::spawn(cmd, dir.path().join("plain.log"));
    wait_for_agents(&url, 1);
    let out = run_remote(&url, &fixture::services_manifest(), &["agent_one"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&out)
    );
    let events = events(&out);
    let messages = infra_messages(&events);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].contains("no connected agent can start services"),
        "{}",
        messages[0]
    );
    assert!(
        messages[0].contains("plain: services are disabled on this agent"),
        "{}",
        messages[0]
    );
}

#[test]
fn manifest_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("testfleet.toml");
    std::fs::write(
        &manifest,
        "[[service]]\nname = \"db\"\nimage = \"x:1\"\nportz = [1]\n",
    )
    .unwrap();
    let out = RunLine::local(1)
        .suite_manifest(&manifest)
        .manifest(&fixture::manifest())
        .output();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::BAD_MANIFEST), "{err}");
    assert!(err.contains(&format!("{}:4:", manifest.display())), "{err}");
    assert!(err.contains("portz"), "{err}");
}
