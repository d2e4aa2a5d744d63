//! A coordinator process and two agent processes with their own work dirs: the run is bundled,
//! uploaded once, downloaded once per agent, and the flaky test's retry runs on the other agent.

use testfleet_model::{AttemptStatus, EventKind, TestFinished, exit_code};

use crate::fixture;
use crate::support::*;

#[test]
fn remote_run_on_two_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator(dir.path());
    let mut a1 = agent(dir.path(), &url, "agent-a", 1);
    let mut a2 = agent(dir.path(), &url, "agent-b", 1);
    wait_for_agents(&url, 2);

    let run = || {
        RunLine::on(&url)
            .retries(1)
            .timeout(5, 1)
            .json()
            .manifest(&fixture::manifest())
            .output()
    };
    let out = run();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::TESTS_FAILED), "{log}");
    assert!(log.contains("uploaded"), "{log}");
    let events = events(&out);
    assert_eq!(final_outcomes(&events), fixture::expected(true), "{log}");

    let s = summary(&events);
    assert!(
        s.attempts_per_agent.get("agent-a").copied().unwrap_or(0) > 0,
        "{s:?}"
    );
    assert!(
        s.attempts_per_agent.get("agent-b").copied().unwrap_or(0) > 0,
        "{s:?}"
    );

    let flaky = attempts(&events, "tests::flaky_first_attempt");
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[0].2.status, AttemptStatus::Failed);
    assert_eq!(flaky[1].2.status, AttemptStatus::Passed);
    assert_ne!(
        flaky[0].1, flaky[1].1,
        "the retry must run on the other agent"
    );

    // The same build again: nothing is uploaded or downloaded a second time.
    let again = run();
    assert_eq!(
        again.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("already on the coordinator"),
        "{}",
        stderr(&again)
    );

    for p in [&mut a1, &mut a2, &mut coord] {
        assert!(p.stop().success(), "clean exit on SIGTERM:\n{}", p.log());
    }
    let coord_log = coord.log();
    assert_eq!(
        coord_log.matches("bundle manifest stored").count(),
        1,
        "{coord_log}"
    );
    assert_eq!(
        coord_log.matches("bundle manifest sent").count(),
        2,
        "{coord_log}"
    );
    for a in [&a1, &a2] {
        assert_eq!(
            a.log().matches("bundle downloaded").count(),
            1,
            "{}",
            a.log()
        );
    }
}

/// An agent whose coordinator goes away reconnects by itself once one listens again; a finished
/// run's events can be read again from any sequence number.
#[test]
fn agents_reconnect_and_watch_resumes_from_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator(dir.path());
    let _agent = agent(dir.path(), &url, "steady", 1);
    wait_for_agents(&url, 1);

    let all = run_adds(&url);
    let run_id = all[0].run_id.to_string();

    assert!(coord.stop().success());
    let addr = url.trim_start_matches("http://").to_owned();
    let (_again, url2) = coordinator_on(dir.path(), &addr, "coordinator-2.log");
    assert_eq!(url, url2);
    wait_for_agents(&url, 1);

    // The run now lives only in the restarted coordinator's history.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use testfleet_proto::pb;
        let mut client = pb::coordinator_client::CoordinatorClient::connect(url.clone())
            .await
            .unwrap();
        let info = client
            .get_run(pb::GetRunRequest {
                run_id: run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.summary.unwrap().passed, 2);
    });

    // And the live coordinator replays from a sequence number.
    let all = run_adds(&url);
    let run_id = all[0].run_id.to_string();
    rt.block_on(async {
        use testfleet_proto::pb;
        let mut client = pb::coordinator_client::CoordinatorClient::connect(url.clone())
            .await
            .unwrap();
        let mut stream = client
            .watch_run(pb::WatchRunRequest {
                run_id,
                from_seq: 2,
                omit_passing_output: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut seqs = vec![];
        while let Some(e) = stream.message().await.unwrap() {
            seqs.push(e.seq);
        }
        let expected: Vec<u64> = all.iter().map(|e| e.seq).filter(|s| *s >= 2).collect();
        assert_eq!(seqs, expected);
    });
}

/// Runs the fixture's two `adds` tests on `url` and returns the run's events.
fn run_adds(url: &str) -> Vec<testfleet_model::RunEvent> {
    let out = RunLine::on(url)
        .json()
        .filters(&["adds"])
        .manifest(&fixture::manifest())
        .output();
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&out)
    );
    events(&out)
}

/// Processes whose environment says agent `id` started them.
fn processes_of_agent(id: &str) -> Vec<u32> {
    let needle = format!("TESTFLEET_AGENT_ID={id}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_killed_agent_takes_its_running_tests_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let id = unique("doomed");
    let mut doomed = agent(dir.path(), &url, &id, 1);
    wait_for_agents(&url, 1);
    let mut cmd = RunLine::on(&url)
        .arg("--timeout")
        .arg("600")
        .filters(&["hangs"])
        .manifest(&fixture::manifest())
        .command();
    cmd.stdout(std::process::Stdio::null());
    let _run = Proc::spawn(cmd, dir.path().join("run.log"));
    wait_until("the start of the hanging test", || {
        !processes_of_agent(&id).is_empty()
    });
    // The token lets the guard find a test it was not yet told of (the agent killed between
    // the spawn and telling it): the guard's unit tests show it kills what carries it.
    for pid in processes_of_agent(&id) {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue; // gone already
        };
        assert!(
            environ.split(|b| *b == 0).any(|v| v
                .strip_prefix(b"TESTFLEET_GUARD=")
                .is_some_and(|token| !token.is_empty())),
            "test process {pid} does not carry its guard's token"
        );
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    wait_until("the end of the killed agent's test", || {
        processes_of_agent(&id).is_empty()
    });
}

#[test]
fn a_draining_agent_finishes_its_running_test_and_gives_back_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let id = unique("drainer");
    let mut drainer = agent(dir.path(), &url, &id, 1);
    wait_for_agents(&url, 1);
    // `hangs` never ends on its own: the timeout makes it a long test the drain must wait for.
    let cmd = RunLine::on(&url)
        .json()
        .timeout(3, 1)
        .filters(&["hangs", "adds"])
        .manifest(&fixture::manifest())
        .command();
    let run = Watched::spawn(cmd, dir.path().join("run.log"));
    wait_until("the start of a test on the draining agent", || {
        !processes_of_agent(&id).is_empty()
    });
    // SIGTERM: the running test is finished, not killed; nothing new is taken.
    assert!(drainer.stop().success(), "{}", drainer.log());
    assert!(drainer.log().contains("draining"), "{}", drainer.log());
    // What it gave back runs on a second agent.
    let _second = agent(dir.path(), &url, &unique("second"), 1);
    let out = run.finish();
    assert_eq!(
        out.status.code(),
        Some(exit_code::TESTS_FAILED),
        "`hangs` times out"
    );
    let events = events(&out);
    let outcomes = final_outcomes(&events);
    let expected = fixture::expected(true);
    for (k, o) in &outcomes {
        assert_eq!(expected[k], *o, "{k:?}");
    }
    assert_eq!(outcomes.len(), 3);
    // No attempt was lost to the drain: each test has exactly the attempts its outcome needs.
    for name in ["tests::adds", "tests::adds_zero"] {
        assert_eq!(attempts(&events, name).len(), 1, "{name}");
    }
    let infra = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::TestFinished(TestFinished { result, .. }) if result.status == AttemptStatus::InfraError))
        .count();
    assert_eq!(infra, 0, "a drain is not an infrastructure failure");
}

/// A run started while its coordinator is down (restarting, or not up yet) says it waits, and
/// goes through once the coordinator is there.
#[test]
fn a_run_started_while_its_coordinator_is_down_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let run = Watched::spawn(
        RunLine::on(&format!("http://{addr}"))
            .json()
            .args(&["--connect-wait", "300"])
            .filters(&["adds"])
            .manifest(&fixture::manifest())
            .command(),
        dir.path().join("run.log"),
    );
    wait_until("the run saying it waits for the coordinator", || {
        run.proc.log().contains("trying again for up to 300 s")
    });
    let (_coord, url) = coordinator_on(dir.path(), &addr, "coordinator.log");
    let _agent = agent(dir.path(), &url, "late", 1);
    all_passed(&run.finish());
}

#[test]
fn a_run_survives_a_coordinator_restart_and_nothing_is_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator(dir.path());
    let addr = url.trim_start_matches("http://").to_owned();
    let id = unique("steadfast");
    let _agent = agent(dir.path(), &url, &id, 1);
    wait_until("the agent's connection", || {
        run_output(testfleet().args(["agents", "--json", "--coordinator", &url]))
            .stdout
            .starts_with(b"{")
    });
    let cmd = RunLine::on(&url)
        .json()
        .retries(1)
        .timeout(3, 1)
        .manifest(&fixture::manifest())
        .command();
    let run = Watched::spawn(cmd, dir.path().join("run.log"));
    // Mid-run, the coordinator dies without a chance to say anything.
    wait_until("a test running on the agent", || {
        !processes_of_agent(&id).is_empty()
    });
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    let (mut coord2, url2) = coordinator_on(dir.path(), &addr, "coordinator-2.log");
    assert_eq!(url2, url);
    let out = run.finish();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::TESTS_FAILED), "{log}");
    let events = events(&out);
    assert_eq!(
        final_outcomes(&events),
        fixture::expected(true),
        "{log}\n{}",
        coord2.log()
    );
    assert!(
        coord2.log().contains("resumed an unfinished run"),
        "{}",
        coord2.log()
    );
    let run_id = events[0].run_id;

    assert!(coord2.stop().success());
    assert_history_exact(&dir.path().join("coordinator"), run_id);
    let store = testfleet_coordinator::SledStore::open(&dir.path().join("coordinator")).unwrap();
    let record = testfleet_coordinator::HistoryStore::run(&store, run_id)
        .unwrap()
        .unwrap();
    assert_eq!(record.resumes, 1);
}

#[test]
fn a_detached_run_goes_on_without_its_submitter() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let _agent = agent(dir.path(), &url, "patient", 1);
    let out = RunLine::on(&url)
        .arg("--detach")
        .filters(&["adds"])
        .manifest(&fixture::manifest())
        .output();
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&out)
    );
    let run_id: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the run id alone");
    wait_until("the detached run's end", || {
        let runs = run_output(testfleet().args(["runs", "--json", "--coordinator", &url]));
        let runs: Vec<testfleet_model::report::RunOverview> =
            serde_json::from_slice(&runs.stdout).unwrap_or_default();
        runs.iter().any(|r| {
            r.run_id == run_id
                && r.summary.as_ref().is_some_and(|s| s.passed == 2)
                && r.state == testfleet_model::RunState::Finished
        })
    });
}
