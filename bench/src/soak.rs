//! The soak run: a coordinator and agents as real processes for a set time (10 minutes unless
//! told), the fixture suite submitted again and again, several runs at once, while agents come and
//! go (drained or killed, in turn, and started again) and the coordinator is stopped and started
//! again on its data dir at intervals. Afterwards history is audited as the chaos run does
//! (results lost, results counted twice); meanwhile the coordinator's RSS and open file
//! descriptors are sampled every second, and printed as peaks and as slopes within each of the
//! coordinator's lives (memory that only grows shows as a positive slope in every life).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::process_fleet::{Fleet, Submitted};

#[derive(clap::Args)]
pub struct Args {
    /// How long to keep submitting runs, in seconds.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Runs going at once.
    #[arg(long, default_value_t = 3)]
    pub concurrent_runs: usize,
    /// Seconds between coordinator restarts (SIGTERM, then started again on its data dir).
    #[arg(long, default_value_t = 150)]
    pub restart_every: u64,
    /// Chance per second that an agent goes (drained and killed in turn) and comes back.
    #[arg(long, default_value_t = 0.1)]
    pub agent_churn: f64,
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

/// RSS in MiB and open file descriptors of process `pid`.
fn sample(pid: u32) -> Option<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kb / 1024.0, fds))
}

/// Least-squares slope of `(seconds, MiB)` samples, in MiB per minute.
fn slope_per_minute(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    let (mx, my) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in samples {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

/// One life of the coordinator process: its samples from start to stop.
#[derive(Default)]
struct Life {
    rss: Vec<(f64, f64)>,
    fds: Vec<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let mut fleet = Fleet::start(testfleet, work.path().to_path_buf(), args.agents)?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let soak = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut life_started = Instant::now();
    let mut lives = vec![Life::default()];
    let (mut drained, mut killed, mut restarts) = (0, 0, 0);
    let mut going: Vec<Submitted> = Vec::new();
    let mut run_ids = Vec::new();
    // CLIs that ended without printing an event (so without a run id to audit), and what they
    // said.
    let mut not_submitted: Vec<String> = Vec::new();
    let mut next_sample = Instant::now();
    loop {
        let soaking = started.elapsed() < soak;
        while soaking && going.len() < args.concurrent_runs {
            going.push(fleet.submit()?);
        }
        let mut i = 0;
        while i < going.len() {
            if going[i].cli.try_wait()?.is_some() {
                match going.swap_remove(i).outcome()? {
                    Ok(id) => run_ids.push(id),
                    Err(why) => not_submitted.push(why),
                }
            } else {
                i += 1;
            }
        }
        if !soaking && going.is_empty() {
            break;
        }
        if started.elapsed() > soak + Duration::from_secs(300) {
            bail!("runs still going 5 minutes after the soak ended");
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            if let Some((rss, fds)) = sample(fleet.coordinator.id()) {
                let life = lives.last_mut().expect("one life at least");
                life.rss.push((life_started.elapsed().as_secs_f64(), rss));
                life.fds.push(fds);
            }
            if soaking && rng.f64() < args.agent_churn {
                let i = rng.usize(..fleet.agents.len());
                let graceful = (drained + killed) % 2 == 0;
                fleet.restart_agent(i, graceful)?;
                if graceful {
                    drained += 1;
                } else {
                    killed += 1;
                }
            }
            if soaking && life_started.elapsed() >= Duration::from_secs(args.restart_every) {
                fleet.restart_coordinator(true)?;
                restarts += 1;
                life_started = Instant::now();
                lives.push(Life::default());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its figures are printed before an audit that fails says why.
    let audit = fleet.finish(true, &run_ids);
    println!(
        "soak: {:.0} s, {} runs, {drained} agents drained and {killed} killed (and started again), {restarts} coordinator restarts",
        started.elapsed().as_secs_f64(),
        run_ids.len()
    );
    if !not_submitted.is_empty() {
        println!(
            "runs whose CLI ended without an event (not audited), and what it said: {}",
            not_submitted.len()
        );
        let mut said = not_submitted.clone();
        said.sort();
        said.dedup();
        for s in said {
            println!("  {s}");
        }
    }
    for (n, life) in lives.iter().enumerate() {
        // A life warms up (history's cache, the finished runs kept for watchers): its second half
        // is where memory that only grows shows.
        let half = life.rss.last().map_or(0.0, |(t, _)| *t) / 2.0;
        let steady: Vec<(f64, f64)> = life
            .rss
            .iter()
            .copied()
            .filter(|(t, _)| *t >= half)
            .collect();
        let peak = life.rss.iter().map(|(_, r)| *r).fold(0.0, f64::max);
        let last = life.rss.last().map_or(0.0, |(_, r)| *r);
        println!(
            "coordinator life {}: {:.0} s, RSS peak {peak:.0} MiB, at the end {last:.0} MiB, slope over its second half {:+.2} MiB/min; open fds max {}, at the end {}",
            n + 1,
            life.rss.last().map_or(0.0, |(t, _)| *t),
            if steady.len() >= 10 {
                slope_per_minute(&steady)
            } else {
                0.0
            },
            life.fds.iter().max().copied().unwrap_or(0),
            life.fds.last().copied().unwrap_or(0),
        );
    }
    audit?.check(run_ids.len())
}

#[cfg(test)]
mod tests {
    use super::slope_per_minute;

    #[test]
    fn the_slope_is_per_minute_and_flat_samples_have_none() {
        let rising: Vec<(f64, f64)> = (0..60)
            .map(|s| (s as f64, 100.0 + s as f64 / 10.0))
            .collect();
        assert!((slope_per_minute(&rising) - 6.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..60).map(|s| (s as f64, 100.0)).collect();
        assert_eq!(slope_per_minute(&flat), 0.0);
    }
}
