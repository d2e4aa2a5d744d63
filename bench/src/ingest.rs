//! The ingest benchmark: simulated agents report results over real gRPC on loopback to a real
//! coordinator process persisting to sled. The clock runs from the first submission until the
//! coordinator has exited after SIGTERM (so every result is on disk), and the store is then
//! opened and audited: every test of every run must be recorded, once, as passed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use testfleet_coordinator::SledStore;
use testfleet_coordinator::history::HistoryStore;
use testfleet_model::{Outcome, RunId};

use crate::coordinator_proc::CoordinatorProc;
use crate::figures::{Figure, Target};
use crate::simagent::{self, Shared};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Results to report in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub tests: usize,
    /// Runs the tests are split into, submitted at once.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    #[arg(long, default_value_t = 8)]
    pub agents: usize,
    #[arg(long, default_value_t = 64)]
    pub slots: u32,
    /// Every Nth result carries `--output-bytes` of output (0: none does), as noisy tests do.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub output_every: u64,
    #[arg(long, default_value_t = 64 << 10, value_name = "BYTES")]
    pub output_bytes: usize,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
    /// An argument for the coordinator (repeat for more), to measure its settings side by side:
    /// `--coordinator-arg=--history-cache-bytes --coordinator-arg=16777216`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub coordinator_arg: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let data = work.path().join("coordinator");
    let per_run = args.tests / args.runs.max(1);
    println!(
        "ingest: {} runs of {per_run} tests, {} simulated agents of {} slots, coordinator persisting to sled",
        args.runs, args.agents, args.slots
    );
    let extra: Vec<&str> = args.coordinator_arg.iter().map(String::as_str).collect();
    let coordinator = CoordinatorProc::start(&testfleet, &data, &extra)?;
    let rt = tokio::runtime::Runtime::new()?;
    let shared = Arc::new(Shared::default());
    shared
        .output_every
        .store(args.output_every, std::sync::atomic::Ordering::Relaxed);
    shared
        .output_bytes
        .store(args.output_bytes, std::sync::atomic::Ordering::Relaxed);
    if args.output_every > 0 {
        println!(
            "ingest: every {}th result carries {} KiB of output",
            args.output_every,
            args.output_bytes >> 10
        );
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let url = coordinator.url.clone();
    let (run_ids, until_finished, agents) = rt.block_on(async {
        let agents = simagent::start_agents(
            &url,
            args.agents,
            args.slots,
            std::time::Duration::ZERO,
            &shared,
            &stop,
        )
        .await?;
        let mut client = simagent::client(simagent::channel(&url).await?);
        let specs: Vec<_> = (0..args.runs)
            .map(|_| simagent::spec("ingest", per_run))
            .collect();
        let started = Instant::now();
        let mut ids = Vec::new();
        let mut watchers = Vec::new();
        for spec in specs {
            let id = simagent::submit(&mut client, spec).await?;
            watchers.push(tokio::spawn(simagent::finished(client.clone(), id.clone())));
            ids.push(id);
        }
        for w in watchers {
            let summary = w.await??;
            if summary.passed as usize != per_run {
                bail!("a run passed {} of {per_run} tests", summary.passed);
            }
        }
        anyhow::Ok((ids, started, agents))
    })?;
    let to_finished = until_finished.elapsed().as_secs_f64();
    simagent::stop_all(rt, stop_tx, agents)?;
    let rss = coordinator.peak_rss_mib()?;
    let cpu = coordinator.stop()?;
    let to_disk = until_finished.elapsed().as_secs_f64();
    let total = per_run * args.runs;

    // The audit: everything reported is in sled, once.
    let store = SledStore::open(&data)?;
    for id in &run_ids {
        let run: u64 = id.parse().context("run ids are numbers")?;
        let tests = store.run_tests(RunId(run))?;
        let passed = tests
            .iter()
            .filter(|t| t.outcome == Some(Outcome::Passed) && t.attempts.len() == 1)
            .count();
        if tests.len() != per_run || passed != per_run {
            bail!(
                "run {run}: sled holds {} test records, {passed} passed once; expected {per_run}",
                tests.len()
            );
        }
    }
    println!(
        "  {total} results: all runs finished after {to_finished:.2} s, on disk after {to_disk:.2} s; audit: all {total} recorded once; coordinator peak RSS {rss:.0} MiB, CPU {cpu:.2} s ({:.1} µs per result)",
        cpu * 1e6 / total as f64
    );
    Ok(vec![
        Figure::new(
            "ingest",
            "results/s, submit to persisted in sled",
            total as f64 / to_disk,
            "results/s",
            Target::AtLeast(100_000.0),
        ),
        Figure::new(
            "ingest",
            "coordinator peak RSS",
            rss,
            "MiB",
            Target::AtMost(300.0),
        ),
    ])
}
