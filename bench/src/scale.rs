//! The scale benchmark: 1,000 simulated agents connected at once, each on its own connection, and
//! one run of 100,000 near-zero tests. Every work request an agent makes while the run has queued
//! tests is timed until its lease arrives; the coordinator's peak RSS is read from `/proc`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;

use crate::coordinator_proc::CoordinatorProc;
use crate::figures::{Figure, Target};
use crate::simagent::{self, Shared, percentile_ms};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    #[arg(long, default_value_t = 100_000)]
    pub tests: usize,
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// How long each simulated test runs, in ms. At 0 the fleet asks for work as fast as the
    /// coordinator can answer (saturation: latency is then queueing, agents / throughput).
    #[arg(long, default_value_t = 0.0)]
    pub test_ms: f64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    println!(
        "scale: {} simulated agents of {} slot(s), each on its own connection; one run of {} near-zero tests",
        args.agents, args.slots, args.tests
    );
    let coordinator = CoordinatorProc::start(&testfleet, &work.path().join("coordinator"), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let url = coordinator.url.clone();
    let (wall, agents) = rt.block_on(async {
        let connecting = Instant::now();
        let agents = simagent::start_agents(
            &url,
            args.agents,
            args.slots,
            std::time::Duration::from_secs_f64(args.test_ms / 1000.0),
            &shared,
            &stop,
        )
        .await?;
        println!(
            "  {} agents connected in {:.2} s",
            args.agents,
            connecting.elapsed().as_secs_f64()
        );
        let mut client = simagent::client(simagent::channel(&url).await?);
        let started = Instant::now();
        let id = simagent::submit(&mut client, simagent::spec("scale", args.tests)).await?;
        let summary = simagent::finished(client, id).await?;
        if summary.passed as usize != args.tests {
            bail!("the run passed {} of {} tests", summary.passed, args.tests);
        }
        anyhow::Ok((started.elapsed().as_secs_f64(), agents))
    })?;
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for a in agents {
            a.await??;
        }
        anyhow::Ok(())
    })?;
    // Every connection closes with the runtime: the coordinator does not wait for idle clients.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let rss = coordinator.peak_rss_mib()?;
    coordinator.stop()?;
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().expect("latency lock"));
    lat.sort_unstable();
    let (p50, p99) = (percentile_ms(&lat, 50.0), percentile_ms(&lat, 99.0));
    println!(
        "  run of {} tests took {wall:.2} s; {} timed requests: p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms; coordinator peak RSS {rss:.0} MiB",
        args.tests,
        lat.len(),
        percentile_ms(&lat, 100.0)
    );
    Ok(vec![
        Figure::new(
            "scale",
            "dispatch latency p50, request to lease",
            p50,
            "ms",
            Target::None,
        ),
        Figure::new(
            "scale",
            "dispatch latency p99, request to lease",
            p99,
            "ms",
            Target::Below(10.0),
        ),
        Figure::new(
            "scale",
            "coordinator peak RSS",
            rss,
            "MiB",
            Target::Below(500.0),
        ),
    ])
}
