//! testfleet as a cluster of containers — a coordinator and three agents, each its own host on a
//! private network (deploy/compose.yaml) — driven through faults: an agent killed, an agent cut
//! off from the network past the lease timeout and let back, the coordinator restarted. Each time
//! the run completes with the fixture model's outcomes and every result recorded exactly once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use testfleet_model::{RunEvent, exit_code};

use crate::fixture;
use crate::support::*;

const LEASE_TIMEOUT_SECS: u64 = 5;

/// Builds `testfleet:local` from this source tree, once per test process.
fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("sh")
            .arg(repo().join("deploy/build-image.sh"))
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "building the image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

struct Cluster {
    project: String,
    env: Vec<(String, String)>,
    url: String,
    data: PathBuf,
    client_token: String,
}

/// The first two octets of the clusters' subnets.
const FLEET_SUBNET: &str = "10.213";

impl Cluster {
    fn up(dir: &Path, net: u8) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let client_token = format!("client-{}", std::process::id()).repeat(3);
        let agent_token = format!("agent-{}", std::process::id()).repeat(3);
        let c = Cluster {
            project: format!("tfmh{}n{net}", std::process::id()),
            env: vec![
                ("COORDINATOR_PORT".into(), port.to_string()),
                ("DATA_DIR".into(), data.display().to_string()),
                ("FLEET_NET".into(), net.to_string()),
                // Outside Docker's default pools, which other tests' networks draw from.
                ("FLEET_SUBNET".into(), FLEET_SUBNET.into()),
                ("LEASE_TIMEOUT".into(), LEASE_TIMEOUT_SECS.to_string()),
                ("CLIENT_TOKEN".into(), client_token.clone()),
                ("AGENT_TOKEN".into(), agent_token),
            ],
            url: format!("http://127.0.0.1:{port}"),
            data,
            client_token,
        };
        c.compose(&["up", "-d"]);
        wait_for_agents_with(&c.url, 3, Some(&c.client_token), &[]);
        c
    }

    fn compose(&self, args: &[&str]) {
        let out = Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("docker-compose runs");
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn docker(&self, args: &[&str]) {
        docker(args);
    }

    fn logs(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.container(service)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    }

    /// Starts a run of the fixture suite, built static so it runs in the agents' FROM-scratch
    /// containers. Returns the process and a channel of its JSON event lines.
    fn start_run(&self, dir: &Path) -> (Proc, mpsc::Receiver<String>) {
        let mut cmd = RunLine::on(&self.url)
            .token(&self.client_token)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", repo().join("target/multihost-fixture"))
            .json()
            .retries(1)
            .timeout(3, 1)
            .manifest(&fixture::manifest())
            .command();
        cmd.stdout(Stdio::piped());
        let mut p = Proc::spawn(cmd, dir.join("run.log"));
        let stdout = p.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        (p, rx)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"))
            .args(["down", "-v", "-t", "1"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
    }
}

/// Waits for the first test to start, then returns every event line once the run ends.
fn after_first_start(
    run: &mut Proc,
    lines: &mpsc::Receiver<String>,
    fault: impl FnOnce(),
) -> (Option<i32>, Vec<RunEvent>) {
    let mut seen = Vec::new();
    loop {
        let line = lines.recv_timeout(GUARD).unwrap_or_else(|e| {
            panic!(
                "the run reports no started test ({e}); its log:\n{}",
                run.log()
            )
        });
        let started = line.contains("\"type\":\"test_started\"");
        seen.push(line);
        if started {
            break;
        }
    }
    fault();
    wait_until("the end of the run", || {
        run.child.try_wait().unwrap().is_some()
    });
    seen.extend(lines.iter());
    let events = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (run.child.wait().unwrap().code(), events)
}

/// The run's outcomes match the fixture model, and history holds every result exactly once.
fn check(cluster: &Cluster, code: Option<i32>, events: &[RunEvent], log: &str) {
    assert_eq!(code, Some(exit_code::TESTS_FAILED), "{log}");
    assert_eq!(final_outcomes(events), fixture::expected(true), "{log}");
    cluster.compose(&["stop", "-t", "5", "coordinator"]);
    assert_history_exact(&cluster.data, events[0].run_id);
}

#[test]
fn a_cluster_of_containers_survives_kills_partitions_and_restarts() {
    if !docker_or_skip("a_cluster_of_containers_survives_kills_partitions_and_restarts") {
        return;
    }
    image();

    // An agent is killed mid-run: its leases expire and its tests run elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::up(dir.path(), 71);
    let (mut run, lines) = c.start_run(dir.path());
    let victim = c.container("agent-2");
    let (code, events) = after_first_start(&mut run, &lines, || c.docker(&["kill", &victim]));
    check(&c, code, &events, &run.log());
    drop(c);

    // An agent is cut off for longer than the lease timeout, then let back: its leases were
    // requeued, and its late results are ignored, not counted twice.
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::up(dir.path(), 72);
    let (mut run, lines) = c.start_run(dir.path());
    let agent3 = c.container("agent-3");
    let net = format!("{}_fleet", c.project);
    let (code, events) = after_first_start(&mut run, &lines, || {
        c.docker(&["network", "disconnect", &net, &agent3]);
        wait_until("the coordinator giving up on agent-3", || {
            c.logs("coordinator").contains("agent lost")
                && c.logs("coordinator").contains("agent-3")
        });
        let ip = format!("{FLEET_SUBNET}.72.13");
        c.docker(&["network", "connect", "--ip", &ip, &net, &agent3]);
    });
    check(&c, code, &events, &run.log());
    drop(c);

    // The coordinator restarts mid-run: it resumes the run, agents reconnect, the CLI re-attaches.
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::up(dir.path(), 73);
    let (mut run, lines) = c.start_run(dir.path());
    let coordinator = c.container("coordinator");
    let (code, events) = after_first_start(&mut run, &lines, || {
        c.docker(&["restart", "-t", "0", &coordinator])
    });
    // The CLI's own account first: when it gives up, its log says why.
    check(&c, code, &events, &run.log());
    assert!(
        c.logs("coordinator").contains("resumed an unfinished run"),
        "{}",
        c.logs("coordinator")
    );
}
