//! A testfleet fleet as real processes on loopback, for the runs that abuse it (chaos, soak): a
//! coordinator on a data dir, agents that can be killed and started again, and the audit of its
//! history afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use testfleet_coordinator::{HistoryStore, SledStore};
use testfleet_model::{AttemptStatus, RunId, RunState};

pub struct Fleet {
    pub testfleet: PathBuf,
    pub dir: PathBuf,
    pub addr: String,
    pub coordinator: Child,
    pub agents: Vec<Child>,
}

/// A `testfleet run` of the fixture suite and what it prints.
pub struct Submitted {
    pub cli: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: PathBuf,
}

impl Submitted {
    /// The run id in the first event the finished CLI printed.
    pub fn run_id(self) -> anyhow::Result<RunId> {
        self.outcome()?
            .map_err(|why| anyhow::anyhow!("the run printed no event: {why}"))
    }

    /// The run id, or (when the CLI printed no event: it never submitted) the last line it said.
    pub fn outcome(self) -> anyhow::Result<Result<RunId, String>> {
        let out = self.stdout.join().map_err(|_| anyhow::anyhow!("reader"))?;
        let Some(first) = out.lines().next() else {
            let said = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let last = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Ok(Err(last.to_owned()));
        };
        let e: testfleet_model::RunEvent = serde_json::from_str(first)?;
        Ok(Ok(e.run_id))
    }
}

impl Fleet {
    /// A coordinator on a free loopback port over `dir`, and `agents` agents.
    pub fn start(testfleet: PathBuf, dir: PathBuf, agents: usize) -> anyhow::Result<Fleet> {
        let (coordinator, addr) = Fleet::start_coordinator(&testfleet, &dir, "127.0.0.1:0")?;
        let mut fleet = Fleet {
            testfleet,
            dir,
            addr,
            coordinator,
            agents: vec![],
        };
        for i in 0..agents {
            let a = fleet.start_agent(i)?;
            fleet.agents.push(a);
        }
        Ok(fleet)
    }

    /// Stops the coordinator (SIGTERM when `graceful`, else SIGKILL) and starts it again on its
    /// data dir and address.
    pub fn restart_coordinator(&mut self, graceful: bool) -> anyhow::Result<()> {
        stop(&mut self.coordinator, graceful);
        let (c, _) = Fleet::start_coordinator(&self.testfleet, &self.dir, &self.addr)?;
        self.coordinator = c;
        Ok(())
    }

    /// Stops agent `i` (drained when `graceful`, else SIGKILL) and starts it again.
    pub fn restart_agent(&mut self, i: usize, graceful: bool) -> anyhow::Result<()> {
        stop(&mut self.agents[i], graceful);
        self.agents[i] = self.start_agent(i)?;
        Ok(())
    }

    /// Stops every agent (SIGKILL) and the coordinator (as [`stop`] does), then audits the runs.
    pub fn finish(mut self, graceful: bool, run_ids: &[RunId]) -> anyhow::Result<Audit> {
        for a in &mut self.agents {
            kill(a);
        }
        stop(&mut self.coordinator, graceful);
        audit(&self.dir, run_ids)
    }

    /// Submits the fixture suite (one retry, 2 s timeouts) and follows it as JSON.
    pub fn submit(&self) -> anyhow::Result<Submitted> {
        let stderr = self.dir.join(format!("run-{}.err", unique_suffix()));
        let manifest =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/basic/Cargo.toml");
        let mut cli = Command::new(&self.testfleet)
            .args([
                "run",
                "--retries",
                "1",
                "--timeout",
                "2",
                "--kill-grace",
                "1",
            ])
            .args(["--json", "--coordinator"])
            .arg(format!("http://{}", self.addr))
            .arg("--manifest-path")
            .arg(manifest)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let out = cli.stdout.take().context("stdout")?;
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s);
            s
        });
        Ok(Submitted {
            cli,
            stdout,
            stderr,
        })
    }

    pub fn start_coordinator(
        testfleet: &Path,
        dir: &Path,
        listen: &str,
    ) -> anyhow::Result<(Child, String)> {
        let mut child = Command::new(testfleet)
            .args([
                "coordinator",
                "--lease-timeout",
                "3",
                // Every run the fleet submits stays in history for the audit: a soak of half
                // an hour submits more than the default 1,000 runs kept.
                "--keep-runs",
                "1000000",
                "--listen",
                listen,
                "--data-dir",
            ])
            .arg(dir.join("coordinator"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let addr = line
            .trim()
            .strip_prefix("testfleet coordinator listening on ")
            .context("the coordinator did not say where it listens")?
            .to_owned();
        Ok((child, addr))
    }

    pub fn start_agent(&self, i: usize) -> anyhow::Result<Child> {
        Ok(Command::new(&self.testfleet)
            .args([
                "agent",
                "--slots",
                "2",
                "--agent-id",
                &format!("chaos-{i}"),
                "--coordinator",
            ])
            .arg(format!("http://{}", self.addr))
            .arg("--work-dir")
            .arg(self.dir.join(format!("agent-{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// SIGTERM and a wait when `graceful` (an agent drains, a coordinator flushes), else [`kill`].
pub fn stop(c: &mut Child, graceful: bool) {
    if graceful {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
    } else {
        kill(c);
    }
}

pub fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// What history says of a fleet's runs: every run must have finished, every test must have
/// settled (else a result was lost), and no attempt may be recorded twice (else a result was
/// counted twice).
pub struct Audit {
    pub completed: usize,
    pub lost: usize,
    pub duplicated: usize,
}

impl Audit {
    /// Prints what the audit found; an error if anything was lost or counted twice.
    pub fn check(&self, runs: usize) -> anyhow::Result<()> {
        println!("runs completed: {} of {runs}", self.completed);
        println!("results lost: {}", self.lost);
        println!("results duplicated: {}", self.duplicated);
        if self.lost > 0 || self.duplicated > 0 || self.completed != runs {
            anyhow::bail!("lost or duplicated results");
        }
        Ok(())
    }
}

fn audit(dir: &Path, run_ids: &[RunId]) -> anyhow::Result<Audit> {
    let store = SledStore::open(&dir.join("coordinator"))?;
    let (mut completed, mut lost, mut duplicated) = (0, 0, 0);
    for id in run_ids {
        let rec = store.run(*id)?.context("a run vanished")?;
        if rec.state == RunState::Finished {
            completed += 1;
        }
        let tests = store.run_tests(RunId(id.0))?;
        lost += rec.total_tests as usize - tests.iter().filter(|t| t.outcome.is_some()).count();
        for t in &tests {
            let real: Vec<u32> = t
                .attempts
                .iter()
                .filter(|a| a.status != AttemptStatus::InfraError)
                .map(|a| a.attempt)
                .collect();
            let mut unique = real.clone();
            unique.sort_unstable();
            unique.dedup();
            duplicated += real.len() - unique.len();
        }
    }
    Ok(Audit {
        completed,
        lost,
        duplicated,
    })
}
