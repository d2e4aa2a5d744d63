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

impl Fleet {
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

pub fn audit(dir: &Path, run_ids: &[RunId]) -> anyhow::Result<Audit> {
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
