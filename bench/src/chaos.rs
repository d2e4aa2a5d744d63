//! The chaos run: a coordinator and agents as real processes on loopback, many runs of the
//! fixture suite, and meanwhile agents killed with SIGKILL (and started again) and the coordinator
//! killed and restarted on its data dir. Afterwards history is audited: every run must have
//! finished, every test must have settled (else a result was lost), and no attempt may be recorded
//! twice (else a result was counted twice).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::process_fleet::{Fleet, kill};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Chance per second that an agent is killed (and started again).
    #[arg(long, default_value_t = 0.3)]
    pub agent_kill_rate: f64,
    /// Chance per second that the coordinator is killed (and started again).
    #[arg(long, default_value_t = 0.05)]
    pub coordinator_kill_rate: f64,
    #[arg(long, default_value_t = 3)]
    pub seed: u64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let mut fleet = Fleet::start(testfleet, work.path().to_path_buf(), args.agents)?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let (mut agent_kills, mut coordinator_kills) = (0, 0);
    let mut run_ids = Vec::new();
    for n in 0..args.runs {
        let mut run = fleet.submit()?;
        let started = Instant::now();
        while run.cli.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(300) {
                kill(&mut run.cli);
                bail!("run {n} did not finish within 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(250));
            if rng.f64() < args.agent_kill_rate / 4.0 {
                let i = rng.usize(..fleet.agents.len());
                fleet.restart_agent(i, false)?;
                agent_kills += 1;
            }
            if rng.f64() < args.coordinator_kill_rate / 4.0 {
                fleet.restart_coordinator(false)?;
                coordinator_kills += 1;
            }
        }
        let id = run.run_id()?;
        run_ids.push(id);
        println!("run {id} ({} of {}) done", n + 1, args.runs);
    }
    let audit = fleet.finish(false, &run_ids)?;
    println!(
        "chaos: {} runs, {agent_kills} agent kills, {coordinator_kills} coordinator restarts",
        run_ids.len()
    );
    audit.check(run_ids.len())
}
