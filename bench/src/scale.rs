//! The scale benchmark: 1,000 simulated agents connected at once, each on its own connection, and
//! one run of 100,000 tests, twice. First with near-zero tests (the agents pass them at once and
//! ask again: the fleet asks for work as fast as the coordinator can hand it out), then with tests
//! of about 100 ms (a busy fleet that does not saturate it). Every work request an agent makes
//! while the run has queued tests is timed until its lease arrives; the coordinator's peak RSS is
//! read from `/proc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Mean duration of a test in the second run, in ms.
    #[arg(long, default_value_t = 100.0)]
    pub busy_test_ms: f64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

struct Outcome {
    wall: f64,
    p50: f64,
    p99: f64,
    rss: f64,
}

fn scenario(testfleet: &Path, args: &Args, test_ms: f64) -> anyhow::Result<Outcome> {
    let work = tempfile::tempdir()?;
    let coordinator = CoordinatorProc::start(testfleet, &work.path().join("coordinator"), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let url = coordinator.url.clone();
    let test_time = Duration::from_secs_f64(test_ms / 1000.0);
    let (wall, agents) = rt.block_on(async {
        let agents =
            simagent::start_agents(&url, args.agents, args.slots, test_time, &shared, &stop)
                .await?;
        let mut client = simagent::client(simagent::channel(&url).await?);
        let started = Instant::now();
        let id = simagent::submit(&mut client, simagent::spec("scale", args.tests)).await?;
        let summary = simagent::finished(client, id).await?;
        if summary.passed as usize != args.tests {
            bail!("the run passed {} of {} tests", summary.passed, args.tests);
        }
        anyhow::Ok((started.elapsed().as_secs_f64(), agents))
    })?;
    simagent::stop_all(rt, stop_tx, agents)?;
    let rss = coordinator.peak_rss_mib()?;
    coordinator.stop()?;
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().expect("latency lock"));
    lat.sort_unstable();
    let (p50, p99) = (percentile_ms(&lat, 50.0), percentile_ms(&lat, 99.0));
    println!(
        "  tests of {test_ms} ms: the run took {wall:.2} s ({:.0} tests/s); {} timed requests: p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms; coordinator peak RSS {rss:.0} MiB",
        args.tests as f64 / wall,
        lat.len(),
        percentile_ms(&lat, 100.0)
    );
    Ok(Outcome {
        wall,
        p50,
        p99,
        rss,
    })
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    println!(
        "scale: {} simulated agents of {} slot(s), each on its own connection; one run of {} tests",
        args.agents, args.slots, args.tests
    );
    let zero = scenario(&testfleet, &args, 0.0)?;
    let busy = scenario(&testfleet, &args, args.busy_test_ms)?;
    let ms = args.busy_test_ms;
    Ok(vec![
        Figure::new(
            "scale",
            "near-zero tests: tests/s handed out and counted",
            args.tests as f64 / zero.wall,
            "tests/s",
            Target::None,
        ),
        Figure::new(
            "scale",
            "near-zero tests: dispatch latency p50",
            zero.p50,
            "ms",
            Target::None,
        ),
        Figure::new(
            "scale",
            "near-zero tests: dispatch latency p99",
            zero.p99,
            "ms",
            Target::Below(10.0),
        ),
        Figure::new(
            "scale",
            format!("tests of ~{ms} ms: dispatch latency p50"),
            busy.p50,
            "ms",
            Target::None,
        ),
        Figure::new(
            "scale",
            format!("tests of ~{ms} ms: dispatch latency p99"),
            busy.p99,
            "ms",
            Target::Below(10.0),
        ),
        Figure::new(
            "scale",
            "coordinator peak RSS",
            zero.rss.max(busy.rss),
            "MiB",
            Target::Below(500.0),
        ),
    ])
}
