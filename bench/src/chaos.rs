//! The chaos run: a coordinator and agents as real processes on loopback, many runs of the
//! fixture suite, and meanwhile agents killed with SIGKILL (and started again) and the coordinator
//! killed and restarted on its data dir. Afterwards history is audited: every run must have
//! finished, every test must have settled (else a result was lost), and no attempt may be recorded
//! twice (else a result was counted twice).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process_fleet::{Audit, Fleet, audit, kill};

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
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/basic/Cargo.toml");
    let work = tempfile::tempdir()?;
    let dir = work.path().to_path_buf();
    let (coordinator, addr) = Fleet::start_coordinator(&testfleet, &dir, "127.0.0.1:0")?;
    let mut fleet = Fleet {
        testfleet,
        dir,
        addr,
        coordinator,
        agents: vec![],
    };
    for i in 0..args.agents {
        let a = fleet.start_agent(i)?;
        fleet.agents.push(a);
    }
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let (mut agent_kills, mut coordinator_kills) = (0, 0);
    let mut run_ids = Vec::new();
    for n in 0..args.runs {
        let mut cli = Command::new(&fleet.testfleet)
            .args([
                "run",
                "--retries",
                "1",
                "--timeout",
                "2",
                "--kill-grace",
                "1",
                "--json",
                "--coordinator",
            ])
            .arg(format!("http://{}", fleet.addr))
            .arg("--manifest-path")
            .arg(&manifest)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = cli.stdout.take().context("stdout")?;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut s);
            s
        });
        let started = Instant::now();
        while cli.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(300) {
                kill(&mut cli);
                bail!("run {n} did not finish within 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(250));
            if rng.f64() < args.agent_kill_rate / 4.0 {
                let i = rng.usize(..fleet.agents.len());
                kill(&mut fleet.agents[i]);
                agent_kills += 1;
                fleet.agents[i] = fleet.start_agent(i)?;
            }
            if rng.f64() < args.coordinator_kill_rate / 4.0 {
                kill(&mut fleet.coordinator);
                coordinator_kills += 1;
                let (c, _) = Fleet::start_coordinator(&fleet.testfleet, &fleet.dir, &fleet.addr)?;
                fleet.coordinator = c;
            }
        }
        let first = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
        let first = first.lines().next().context("the run printed no event")?;
        let e: testfleet_model::RunEvent = serde_json::from_str(first)?;
        run_ids.push(e.run_id);
        println!("run {} ({} of {}) done", e.run_id, n + 1, args.runs);
    }
    for a in &mut fleet.agents {
        kill(a);
    }
    kill(&mut fleet.coordinator);

    let Audit {
        completed,
        lost,
        duplicated,
    } = audit(&fleet.dir, &run_ids)?;
    println!(
        "chaos: {} runs, {agent_kills} agent kills, {coordinator_kills} coordinator restarts",
        run_ids.len()
    );
    println!("runs completed: {completed} of {}", run_ids.len());
    println!("results lost: {lost}");
    println!("results duplicated: {duplicated}");
    if lost > 0 || duplicated > 0 || completed != run_ids.len() {
        bail!("chaos found lost or duplicated results");
    }
    Ok(())
}
