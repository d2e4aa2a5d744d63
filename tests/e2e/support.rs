//! Helpers for driving the real binary: processes that are killed when a test ends, reading a
//! coordinator's address, parsing the JSON event stream. Waits are on events, each with a generous
//! guard timeout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testfleet_model::{
    AttemptResult, AttemptStatus, EventKind, Outcome, RunEvent, RunSummary, TestFinished,
};

pub const GUARD: Duration = Duration::from_secs(120);

pub fn testfleet() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testfleet"));
    cmd.env_remove("TESTFLEET_COORDINATOR")
        .env_remove("TESTFLEET_DATA_DIR")
        .env_remove("TESTFLEET_TOKEN")
        .env_remove("TESTFLEET_TOKENS")
        .env_remove("RUST_BACKTRACE")
        .env("NO_COLOR", "1");
    cmd
}

/// A child process killed (its whole process) when dropped, with its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, stderr: PathBuf) -> Self {
        let file = std::fs::File::create(&stderr).unwrap();
        let child = cmd.stderr(file).spawn().expect("testfleet starts");
        Proc { child, stderr }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        wait_guarded(&mut self.child)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_guarded(&mut self) -> std::process::ExitStatus {
        wait_guarded(&mut self.child)
    }
}

fn wait_guarded(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < GUARD,
            "process did not exit within {GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proc {
    /// Even when a test fails, its processes stop gracefully first, so agents remove their
    /// containers; SIGKILL only if one does not stop in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `testfleet coordinator` on a free loopback port and returns it with its URL.
pub fn coordinator(dir: &Path) -> (Proc, String) {
    coordinator_on(dir, "127.0.0.1:0", "coordinator.log")
}

pub fn coordinator_on(dir: &Path, listen: &str, log: &str) -> (Proc, String) {
    let (p, addr) = coordinator_with(dir, listen, log, &[]);
    (p, format!("http://{addr}"))
}

/// Starts a coordinator with `extra` arguments; returns it with the address it listens on.
pub fn coordinator_with(dir: &Path, listen: &str, log: &str, extra: &[&str]) -> (Proc, String) {
    let (p, addr, _) = coordinator_lines(dir, listen, log, extra, &[]);
    (p, addr)
}

/// A coordinator on a free loopback port with `env` set; returns it with its URL.
pub fn coordinator_with_env(dir: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let (p, addr, _) = coordinator_lines(dir, "127.0.0.1:0", "coordinator.log", &[], env);
    (p, format!("http://{addr}"))
}

/// Starts a coordinator that also serves HTTP on a free loopback port; returns it with its gRPC
/// URL and its HTTP base URL (`http://127.0.0.1:PORT`).
pub fn coordinator_with_http(dir: &Path, extra: &[&str]) -> (Proc, String, String) {
    let args = [&["--http-listen", "127.0.0.1:0"], extra].concat();
    let (p, addr, lines) = coordinator_lines(dir, "127.0.0.1:0", "coordinator.log", &args, &[]);
    let line = lines
        .recv_timeout(GUARD)
        .expect("the coordinator prints its HTTP address");
    let http = line
        .trim()
        .strip_prefix("testfleet dashboard and metrics on ")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (p, format!("http://{addr}"), http)
}

/// Starts a coordinator; returns it, the address of its first line, and its later stdout lines.
fn coordinator_lines(
    dir: &Path,
    listen: &str,
    log: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String, mpsc::Receiver<String>) {
    let mut cmd = testfleet();
    // Tests that need services fail at once when no agent can run them: these tests know no
    // other agent is coming.
    cmd.args([
        "coordinator",
        "--service-grace",
        "0",
        "--listen",
        listen,
        "--data-dir",
    ])
    .arg(dir.join("coordinator"))
    .args(extra)
    .envs(env.iter().copied())
    .stdout(Stdio::piped());
    let mut p = Proc::spawn(cmd, dir.join(log));
    let stdout = p.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Reads stdout to its end, so the coordinator never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(GUARD)
        .expect("the coordinator prints its address");
    let addr = line
        .trim()
        .strip_prefix("testfleet coordinator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", p.log()))
        .to_owned();
    (p, addr, rx)
}

pub fn agent(dir: &Path, url: &str, id: &str, slots: u32) -> Proc {
    Proc::spawn(
        agent_command(dir, url, id, slots),
        dir.join(format!("{id}.log")),
    )
}

/// The command line of [`agent`], for tests that add to it.
pub fn agent_command(dir: &Path, url: &str, id: &str, slots: u32) -> Command {
    let mut cmd = testfleet();
    cmd.args([
        "agent",
        "--coordinator",
        url,
        "--agent-id",
        id,
        "--slots",
        &slots.to_string(),
        "--work-dir",
    ])
    .arg(dir.join(id));
    cmd
}

/// Waits until the coordinator lists `n` agents.
/// An agent (2 slots, work dir `dir/ID`) in a mount namespace of its own where `ws`, the suite's
/// directory, is an empty tmpfs: like an agent on another machine, it reaches the suite only
/// through the bundle. Needs root and util-linux's `unshare`.
pub fn hidden_agent_command(dir: &Path, url: &str, id: &str, ws: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(ws)
        .arg(env!("CARGO_BIN_EXE_testfleet"))
        .args(["agent", "--coordinator", url, "--agent-id", id])
        .args(["--slots", "2", "--work-dir"])
        .arg(dir.join(id));
    for k in [
        "TESTFLEET_COORDINATOR",
        "TESTFLEET_TOKEN",
        "TESTFLEET_TOKEN_FILE",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

/// Whether this machine lets a test start an agent in a mount namespace of its own (root with
/// util-linux's `unshare`), as an agent on another machine would be.
pub fn namespaces_or_skip(checks: &str) -> bool {
    tool_or_skip(
        "unshare",
        &["-m", "--propagation", "private", "true"],
        "util-linux's unshare, run as root",
        checks,
    )
}

pub fn wait_for_agents(url: &str, n: usize) {
    wait_for_agents_with(url, n, None, &[])
}

/// Waits for `n` agents, asking with `token` (a client or reader token) if given, and `extra`
/// arguments (TLS settings).
pub fn wait_for_agents_with(url: &str, n: usize, token: Option<&str>, extra: &[&str]) {
    let start = Instant::now();
    loop {
        let mut cmd = testfleet();
        if let Some(t) = token {
            cmd.env("TESTFLEET_TOKEN", t);
        }
        let out = cmd
            .args(["agents", "--json", "--coordinator", url])
            .args(extra)
            .output()
            .unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() >= n {
            return;
        }
        assert!(
            start.elapsed() < GUARD,
            "{n} agents did not connect within {GUARD:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run_output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("testfleet runs")
}

pub fn events(out: &Output) -> Vec<RunEvent> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub type Key = (String, String);

pub fn final_outcomes(events: &[RunEvent]) -> BTreeMap<Key, Outcome> {
    let mut out = BTreeMap::new();
    for e in events {
        match &e.kind {
            EventKind::RunStarted { skipped, .. } => {
                for t in skipped {
                    out.insert(
                        (t.binary_id.to_string(), t.name.to_string()),
                        Outcome::Skipped,
                    );
                }
            }
            EventKind::TestFinished(TestFinished {
                test,
                final_outcome: Some(o),
                ..
            }) => {
                out.insert((test.binary_id.to_string(), test.name.to_string()), *o);
            }
            _ => {}
        }
    }
    out
}

/// Every attempt of one test: (attempt number, agent, result).
pub fn attempts(events: &[RunEvent], name: &str) -> Vec<(u32, String, AttemptResult)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(TestFinished {
                test,
                attempt,
                agent_id,
                result,
                ..
            }) if &*test.name == name => Some((*attempt, agent_id.clone(), result.clone())),
            _ => None,
        })
        .collect()
}

/// A run's id, from the events its `testfleet run --json` printed.
pub fn run_id_of(out: &Output) -> testfleet_model::RunId {
    events(out)
        .first()
        .unwrap_or_else(|| panic!("the run printed no event: {}", stderr(out)))
        .run_id
}

pub fn summary(events: &[RunEvent]) -> RunSummary {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RunFinished { summary, .. } => Some(summary.clone()),
            _ => None,
        })
        .expect("the run finished")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether the Docker engine answers. When it does not, a test that needs it fails if
/// `TESTFLEET_REQUIRE_DOCKER=1` (as in CI) and otherwise says plainly that it was skipped.
pub fn docker_or_skip(test: &str) -> bool {
    let up = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if up {
        return true;
    }
    if std::env::var("TESTFLEET_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!(
            "{test}: Docker is required (TESTFLEET_REQUIRE_DOCKER=1) but the engine is unreachable"
        );
    }
    eprintln!(
        "SKIPPED {test}: the Docker engine is unreachable (TESTFLEET_REQUIRE_DOCKER=1 makes this a failure)"
    );
    false
}

/// The events of a run that must have ended with success and every test passed (or skipped).
pub fn all_passed(out: &Output) -> Vec<RunEvent> {
    assert_eq!(
        out.status.code(),
        Some(testfleet_model::exit_code::SUCCESS),
        "{}",
        stderr(out)
    );
    let events = events(out);
    let outcomes = final_outcomes(&events);
    assert!(
        outcomes
            .values()
            .all(|o| matches!(o, Outcome::Passed | Outcome::Skipped)),
        "{outcomes:?}"
    );
    events
}

/// The messages of the tests that ended as infrastructure errors.
pub fn infra_messages(events: &[RunEvent]) -> Vec<String> {
    messages_of(events, |f| f.final_outcome == Some(Outcome::InfraError))
}

/// The messages of every attempt that was an infrastructure error, retried or not.
pub fn infra_attempts(events: &[RunEvent]) -> Vec<String> {
    messages_of(events, |f| f.result.status == AttemptStatus::InfraError)
}

fn messages_of(events: &[RunEvent], keep: impl Fn(&TestFinished) -> bool) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(f) if keep(f) => Some(f.result.message.clone()),
            _ => None,
        })
        .collect()
}

/// Runs `docker ARGS`, which must succeed.
pub fn docker(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Containers, networks and volumes still labelled as `agent`'s.
pub fn leftovers(agent: &str) -> Vec<String> {
    let label = format!("label=testfleet.agent={agent}");
    let mut out = Vec::new();
    for args in [
        vec!["ps", "-aq", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
    ] {
        let o = Command::new("docker")
            .args(&args)
            .output()
            .expect("docker runs");
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    out
}

/// Whether `tool` can be run (`probe` is its arguments for a harmless call). Where it is missing,
/// a test skips the checks that need it, saying so, unless `TESTFLEET_REQUIRE_TOOLS=1` (set by
/// `.ci/run`, which installs every tool) makes that a failure.
pub fn tool_or_skip(tool: &str, probe: &[&str], install: &str, checks: &str) -> bool {
    let present = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("TESTFLEET_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "TESTFLEET_REQUIRE_TOOLS=1 but `{tool}` cannot be run ({install})"
        );
        eprintln!("SKIPPED {checks}: `{tool}` is not installed ({install})");
    }
    present
}

/// Whether pytest can be run (`python3 -m pytest`), for the tests of pytest suites.
pub fn pytest_or_skip(test: &str) -> bool {
    tool_or_skip(
        "python3",
        &["-m", "pytest", "--version"],
        "pip install pytest",
        test,
    )
}

/// The repository's root, where the examples are.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies `examples/NAME` to `to`, without what running it leaves (dot files, `__pycache__`, a
/// built server), so that a test's runs never write into the repository.
pub fn copy_example(name: &str, to: &Path) {
    copy_tree(&repo().join("examples").join(name), to, &|name| {
        name.starts_with('.') || name == "__pycache__" || name == "kvstore-server"
    });
}

/// A copy of `tests/fixtures/NAME` in `dir` (its `.gitignore` included, its `target` not), for
/// tests whose runs write beside their fixtures or change their files.
pub fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let ws = dir.join(name);
    copy_tree(&repo().join("tests/fixtures").join(name), &ws, &|name| {
        name == "target"
    });
    ws
}

fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&str) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if skip(&name) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name), skip);
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// A name unique to this test process, for agent ids whose containers a test inspects.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Waits until `done()` holds, checking every 50 ms; past the guard the test fails, saying `what`
/// did not happen.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_or_show(what, done, String::new);
}

/// [`wait_until`], and past the guard the failure shows `show()` too (a process's log).
pub fn wait_until_or_show(what: &str, mut done: impl FnMut() -> bool, show: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < GUARD,
            "{what} did not happen within {GUARD:?}\n{}",
            show()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fixture suite on the coordinator at `url` with one retry and a 5 s timeout, as JSON events,
/// run by `cmd` (a [`testfleet`] with whatever environment the test needs) with `extra`
/// arguments. It must end as the fixture does, with failed tests; returns its events.
pub fn fixture_run_on(cmd: Command, url: &str, extra: &[&str]) -> Vec<RunEvent> {
    let out = RunLine::on_with(cmd, url)
        .retries(1)
        .timeout(5, 1)
        .json()
        .args(extra)
        .manifest(&crate::fixture::manifest())
        .output();
    assert_eq!(
        out.status.code(),
        Some(testfleet_model::exit_code::TESTS_FAILED),
        "{}",
        stderr(&out)
    );
    events(&out)
}

/// `testfleet run --coordinator URL --json FILTERS... --manifest-path MANIFEST`.
pub fn run_remote(url: &str, manifest: &Path, filters: &[&str]) -> Output {
    RunLine::on(url)
        .json()
        .filters(filters)
        .manifest(manifest)
        .output()
}

/// A process whose stdout is collected in the background, for runs a test interferes with while
/// they go on.
pub struct Watched {
    pub proc: Proc,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Watched {
    pub fn spawn(mut cmd: Command, stderr: PathBuf) -> Self {
        cmd.stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd, stderr);
        let mut out = proc.child.stdout.take().expect("stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut buf);
            buf
        });
        Watched {
            proc,
            stdout: Some(stdout),
        }
    }

    /// Waits (guarded) for the process to end, and returns all it printed.
    pub fn finish(mut self) -> Output {
        wait_until("the end of the run", || {
            self.proc.child.try_wait().unwrap().is_some()
        });
        Output {
            status: self.proc.child.wait().unwrap(),
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: std::fs::read(&self.proc.stderr).unwrap_or_default(),
        }
    }
}

/// The run's records in sled match the fixture model, and hold every result exactly once: no
/// attempt number has two real (non-infrastructure) results, and real attempts count up from 1.
pub fn assert_history_exact(data_dir: &Path, run_id: testfleet_model::RunId) {
    assert_history_matches(data_dir, run_id, &crate::fixture::expected(true));
}

/// History holds the run's tests with exactly the `expected` outcomes, and no attempt number of
/// a test holds two real results (none counted twice).
pub fn assert_history_matches(
    data_dir: &Path,
    run_id: testfleet_model::RunId,
    expected: &BTreeMap<Key, Outcome>,
) {
    use testfleet_coordinator::HistoryStore;
    let store = testfleet_coordinator::SledStore::open(data_dir).unwrap();
    let records = store.run_tests(run_id).unwrap();
    let stored: BTreeMap<_, _> = records
        .iter()
        .map(|r| ((r.binary_id.clone(), r.name.clone()), r.outcome.unwrap()))
        .collect();
    assert_eq!(&stored, expected);
    for r in &records {
        let real: Vec<u32> = r
            .attempts
            .iter()
            .filter(|a| a.status != testfleet_model::AttemptStatus::InfraError)
            .map(|a| a.attempt)
            .collect();
        assert_eq!(
            real,
            (1..=real.len() as u32).collect::<Vec<_>>(),
            "{}: {:?}",
            r.name,
            r.attempts
        );
    }
}

/// A `testfleet run` command line said by what it asks for, instead of argv spelled out in each
/// test: `RunLine::on(&url).json().retries(1).manifest(&path).command()`.
pub struct RunLine(Command);

impl RunLine {
    /// A run on the coordinator at `url`.
    pub fn on(url: &str) -> Self {
        Self::on_with(testfleet(), url)
    }

    /// A run on the coordinator at `url` by `cmd`, a [`testfleet`] with whatever environment the
    /// test gives it (a token, a tracing endpoint).
    pub fn on_with(mut cmd: Command, url: &str) -> Self {
        cmd.args(["run", "--coordinator", url]);
        RunLine(cmd)
    }

    /// A run on `agents` local agents.
    pub fn local(agents: u32) -> Self {
        let mut cmd = testfleet();
        cmd.args(["run", "--local", &agents.to_string()]);
        RunLine(cmd)
    }

    /// Events as JSON lines on stdout.
    pub fn json(self) -> Self {
        self.arg("--json")
    }

    pub fn retries(self, n: u32) -> Self {
        self.arg("--retries").arg(&n.to_string())
    }

    /// The per-test timeout and the grace before SIGKILL, in seconds.
    pub fn timeout(self, secs: u32, kill_grace: u32) -> Self {
        self.arg("--timeout")
            .arg(&secs.to_string())
            .arg("--kill-grace")
            .arg(&kill_grace.to_string())
    }

    /// Only tests whose names contain one of these.
    pub fn filters(mut self, filters: &[&str]) -> Self {
        self.0.args(filters);
        self
    }

    /// The suite's `Cargo.toml`.
    pub fn manifest(mut self, path: &Path) -> Self {
        self.0.arg("--manifest-path").arg(path);
        self
    }

    /// Anything else, as given.
    pub fn arg(mut self, arg: &str) -> Self {
        self.0.arg(arg);
        self
    }

    /// More of anything else, as given.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.0.args(args);
        self
    }

    /// The client's token.
    pub fn token(self, token: &str) -> Self {
        self.env("TESTFLEET_TOKEN", token)
    }

    /// A variable of the run's environment (a local run's tests inherit it).
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    /// A variable of this process's environment the run must not see.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.0.env_remove(key);
        self
    }

    /// The suite manifest (`testfleet.toml`) to use instead of the suite's own.
    pub fn suite_manifest(mut self, path: &Path) -> Self {
        self.0.arg("--manifest").arg(path);
        self
    }

    /// Where a local run keeps its history.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.0.arg("--data-dir").arg(dir);
        self
    }

    /// Where the run writes its JUnit report.
    pub fn junit(mut self, path: &Path) -> Self {
        self.0.arg("--junit").arg(path);
        self
    }

    /// Started in `dir` (no `--manifest-path`: the suite is found from there).
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.0.current_dir(dir);
        self
    }

    pub fn command(self) -> Command {
        self.0
    }

    /// Runs it to its end.
    pub fn output(self) -> Output {
        run_output(&mut self.command())
    }
}
