//! Compose stacks as a suite declares them (`[[compose]]`): a two-service stack whose file pins a
//! container name and a host port, at scope `agent` and `lease`, on two agents that cannot see
//! the workspace: every test reaches both services through the exports, the agents never
//! collide, healthchecks are waited for, and no container, network or volume is left — after the
//! run, and after an agent killed with SIGKILL starts again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use testfleet_model::{EventKind, RunEvent, Scope};

use crate::loopback_registry::fixture_server_image;
use crate::support::*;

/// Both services run the fixture server; `front` pins what two agents on one engine would fight
/// over, `db` keeps a named volume and has a healthcheck.
fn compose_file(image: &str) -> String {
    format!(
        r#"services:
  front:
    image: {image}
    container_name: pinned-front
    ports:
      - "18080:7000"
    depends_on: [db]
  db:
    image: {image}
    ports: ["7000"]
    volumes:
      - data:/data
    healthcheck:
      test: ["CMD", "/fixture-server", "probe"]
      interval: 1s
      retries: 30
volumes:
  data: {{}}
"#
    )
}

const MANIFEST: &str = r#"[runner]
kind = "pytest"
paths = ["tests"]

[[compose]]
name = "shared"
file = "stack/compose.test.yaml"
scope = "agent"
wait = { front = { port = 7000 }, db = { log = "fixture-server ready" } }
exports = { FRONT = "{host}:{port:front:7000}", DB = "{host}:{port:db:7000}" }
binaries = ["tests/test_shared.py"]

[[compose]]
name = "own"
file = "stack/compose.test.yaml"
scope = "lease"
wait = { front = { port = 7000 } }
exports = { FRONT = "{host}:{port:front:7000}", DB = "{host}:{port:db:7000}" }
binaries = ["tests/test_own.py"]
"#;

/// Each test asks both services for their ids and prints them, so the run says which containers
/// served which test.
fn test_file(n: usize) -> String {
    let mut s = String::from(
        "import os, socket\n\n\ndef ask(var, what):\n    host, port = os.environ[var].rsplit(':', 1)\n    with socket.create_connection((host, int(port)), timeout=10) as c:\n        c.sendall(what.encode() + b'\\n')\n        return c.makefile().readline().strip()\n\n\ndef check():\n    assert ask('FRONT', 'PING') == 'PONG'\n    assert ask('DB', 'PING') == 'PONG'\n    print('SERVED-BY', ask('FRONT', 'ID'), ask('DB', 'ID'))\n",
    );
    for i in 0..n {
        s.push_str(&format!("\n\ndef test_{i}():\n    check()\n"));
    }
    s
}

fn write_suite(dir: &Path) {
    std::fs::create_dir_all(dir.join("stack")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("stack/compose.test.yaml"),
        compose_file(&fixture_server_image()),
    )
    .unwrap();
    std::fs::write(dir.join("testfleet.toml"), MANIFEST).unwrap();
    std::fs::write(dir.join("tests/test_shared.py"), test_file(8)).unwrap();
    std::fs::write(dir.join("tests/test_own.py"), test_file(8)).unwrap();
}

fn stack_starts(events: &[RunEvent]) -> Vec<(String, String, Scope)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ServiceStarted {
                agent_id,
                service,
                scope,
                ..
            } => Some((agent_id.clone(), service.clone(), *scope)),
            _ => None,
        })
        .collect()
}

/// Whether Docker, pytest and the compose tool are there, as [`tool_or_skip`].
fn stacks_or_skip(test: &str) -> bool {
    docker_or_skip(test)
        && pytest_or_skip(test)
        && tool_or_skip(
            "docker-compose",
            &["version"],
            "apt-get install docker-compose",
            test,
        )
}

#[test]
fn compose_stacks_serve_tests_at_agent_and_lease_scope_and_leave_nothing() {
    let name = "compose_stacks_serve_tests_at_agent_and_lease_scope_and_leave_nothing";
    if !stacks_or_skip(name) || !namespaces_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    write_suite(&suite);
    let (_coordinator, url) = coordinator(dir.path());
    let (a_id, b_id) = (unique("stack-a"), unique("stack-b"));
    let mut a = Proc::spawn(
        hidden_agent_command(dir.path(), &url, &a_id, &suite),
        dir.path().join("a.log"),
    );
    let mut b = Proc::spawn(
        hidden_agent_command(dir.path(), &url, &b_id, &suite),
        dir.path().join("b.log"),
    );
    wait_for_agents(&url, 2);
    let run = || all_passed(&RunLine::on(&url).in_dir(&suite).json().output());
    let events = run();
    assert_eq!(final_outcomes(&events).len(), 16);

    // Which stacks served which tests, from the ids the tests printed.
    let mut served: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for e in &events {
        if let EventKind::TestFinished(f) = &e.kind {
            // Every stack came up at its first try: no attempt needed a retry.
            assert_eq!(
                f.result.status,
                testfleet_model::AttemptStatus::Passed,
                "{}: {}",
                f.test.name,
                f.result.message
            );
            let out = String::from_utf8_lossy(&f.result.output);
            let line = out
                .lines()
                .find(|l| l.contains("SERVED-BY"))
                .unwrap_or_else(|| panic!("{}: no SERVED-BY in {out}", f.test.name));
            let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
            served
                .entry(f.test.binary_id.to_string())
                .or_default()
                .insert((ids[0].to_owned(), ids[1].to_owned()));
        }
    }
    let starts = stack_starts(&events);
    let shared: Vec<_> = starts.iter().filter(|s| s.1 == "shared").collect();
    let agents_with_shared: BTreeSet<&String> = shared.iter().map(|s| &s.0).collect();
    assert_eq!(
        shared.len(),
        agents_with_shared.len(),
        "one agent-scope stack per agent: {starts:?}"
    );
    assert_eq!(
        served["tests/test_shared.py"].len(),
        shared.len(),
        "agent scope: each agent's tests share its stack"
    );
    let own = starts.iter().filter(|s| s.1 == "own").count();
    let leases = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::LeaseFinished { .. }))
        .count();
    assert!(
        own >= 1 && own <= leases,
        "{own} lease stacks, {leases} leases"
    );
    assert_eq!(
        served["tests/test_own.py"].len(),
        own,
        "lease scope: a stack per lease that needed it"
    );
    let ran_on: BTreeSet<String> = summary(&events).attempts_per_agent.into_keys().collect();
    assert_eq!(ran_on.len(), 2, "both agents ran tests: {ran_on:?}");

    a.stop();
    b.stop();
    for id in [&a_id, &b_id] {
        assert_eq!(leftovers(id), Vec::<String>::new(), "{id} left something");
    }

    // An agent killed with its agent-scope stack up leaves it; started again, it removes it.
    let c_id = unique("stack-c");
    let mut c = agent(dir.path(), &url, &c_id, 2);
    wait_until("the third agent connects", || {
        let out = testfleet()
            .args(["agents", "--json", "--coordinator", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&c_id)
    });
    let events = run();
    assert!(
        stack_starts(&events).iter().any(|s| s.0 == c_id),
        "{:?}",
        stack_starts(&events)
    );
    // (Its lease stacks may still be going down; its agent-scope stack stays while it lives.)
    assert!(
        !leftovers(&c_id).is_empty(),
        "the agent scope stack is up while its agent is"
    );
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    assert!(
        !leftovers(&c_id).is_empty(),
        "SIGKILL leaves the stack behind"
    );
    let mut again = agent(dir.path(), &url, &c_id, 2);
    wait_until("the restarted agent sweeps what it left", || {
        leftovers(&c_id).is_empty()
    });
    again.stop();
    assert_eq!(leftovers(&c_id), Vec::<String>::new());
}

/// A suite written for its compose file reaches `127.0.0.1:PORT` as the file pins it.
#[test]
fn a_stack_keeps_the_host_ports_its_file_pins_when_asked() {
    let name = "a_stack_keeps_the_host_ports_its_file_pins_when_asked";
    if !stacks_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(suite.join("tests")).unwrap();
    let port = crate::loopback_registry::free_port();
    std::fs::write(
        suite.join("compose.yaml"),
        format!(
            "services:\n  server:\n    image: {}\n    ports:\n      - \"127.0.0.1:{port}:7000\"\n",
            fixture_server_image()
        ),
    )
    .unwrap();
    std::fs::write(
        suite.join("tests/test_pinned.py"),
        format!(
            "import socket\n\n\ndef test_the_pinned_port_answers():\n    with socket.create_connection(('127.0.0.1', {port}), timeout=10) as c:\n        c.sendall(b'PING\\n')\n        assert c.makefile().readline().strip() == 'PONG'\n"
        ),
    )
    .unwrap();
    let manifest = |host_ports: &str| {
        format!(
            "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n\n[[compose]]\nname = \"stack\"\n\
             file = \"compose.yaml\"\nscope = \"test\"\n{host_ports}\
             wait = {{ server = {{ log = \"fixture-server ready\" }} }}\n"
        )
    };
    let run = || {
        RunLine::local(1)
            .json()
            .in_dir(&suite)
            .data_dir(&dir.path().join("data"))
            .output()
    };
    // As the file pins it: the suite passes as written.
    std::fs::write(
        suite.join("testfleet.toml"),
        manifest("host_ports = \"file\"\n"),
    )
    .unwrap();
    all_passed(&run());
    // By default the engine picks the port, and a suite that hardcodes it cannot reach it.
    std::fs::write(suite.join("testfleet.toml"), manifest("")).unwrap();
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(testfleet_model::exit_code::TESTS_FAILED),
        "{}",
        stderr(&out)
    );
}
