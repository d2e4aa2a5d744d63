//! The scale benchmark: 1,000 simulated agents connected at once, each on its own connection, and
//! one run of 100,000 tests, twice. First with near-zero tests (the agents pass them at once and
//! ask again: the fleet asks for work as fast as the coordinator can hand it out), then with tests
//! of about 100 ms (a busy fleet that does not saturate it). Every work request an agent makes
//! while the run has queued tests is timed until its lease arrives; the coordinator's peak RSS is
//! read from `/proc`. Between the two, the near-zero run is repeated against the transport floor
//! (`floor`): the same agents and protocol with nothing behind it, the latency no coordinator can
//! go below on this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::coordinator_proc::CoordinatorProc;
use crate::figures::{Figure, Target};
use crate::floor::Floor;
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

/// What the agents measured in one scenario.
struct Timed {
    wall: f64,
    p50: f64,
    p99: f64,
    max: f64,
    requests: usize,
    leases: u64,
}

impl Timed {
    fn line(&self, what: &str, tests: usize) -> String {
        format!(
            "  {what}: the run took {:.2} s ({:.0} tests/s); {} leases, {} timed requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.wall,
            tests as f64 / self.wall,
            self.leases,
            self.requests,
            self.p50,
            self.p99,
            self.max
        )
    }
}

/// The agents' side of a scenario: starts them against `url`, calls `run` once all of them are
/// connected (it returns when the run is over, and is what the wall time covers), then stops them
/// and gathers their timed requests.
fn drive<F, Fut>(url: &str, args: &Args, test_ms: f64, run: F) -> anyhow::Result<Timed>
where
    F: FnOnce(Arc<Shared>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Runtime::new()?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let test_time = Duration::from_secs_f64(test_ms / 1000.0);
    let (wall, agents) = rt.block_on(async {
        let agents =
            simagent::start_agents(url, args.agents, args.slots, test_time, &shared, &stop).await?;
        let started = Instant::now();
        run(shared.clone()).await?;
        anyhow::Ok((started.elapsed().as_secs_f64(), agents))
    })?;
    simagent::stop_all(rt, stop_tx, agents)?;
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().expect("latency lock"));
    lat.sort_unstable();
    Ok(Timed {
        wall,
        p50: percentile_ms(&lat, 50.0),
        p99: percentile_ms(&lat, 99.0),
        max: percentile_ms(&lat, 100.0),
        requests: lat.len(),
        leases: shared.leases.load(Ordering::Relaxed),
    })
}

/// One run through a real coordinator; also returns the coordinator's peak RSS in MiB.
fn scenario(testfleet: &Path, args: &Args, test_ms: f64) -> anyhow::Result<(Timed, f64)> {
    let work = tempfile::tempdir()?;
    let coordinator = CoordinatorProc::start(testfleet, &work.path().join("coordinator"), &[])?;
    let url = coordinator.url.clone();
    let tests = args.tests;
    let timed = drive(&coordinator.url, args, test_ms, |_| async move {
        let mut client = simagent::client(simagent::channel(&url).await?);
        let id = simagent::submit(&mut client, simagent::spec("scale", tests)).await?;
        let summary = simagent::finished(client, id).await?;
        if summary.passed as usize != tests {
            bail!("the run passed {} of {tests} tests", summary.passed);
        }
        Ok(())
    })?;
    let rss = coordinator.peak_rss_mib()?;
    coordinator.stop()?;
    println!(
        "{}; coordinator peak RSS {rss:.0} MiB",
        timed.line(&format!("tests of {test_ms} ms"), tests)
    );
    Ok((timed, rss))
}

/// The same near-zero run against the transport floor, in leases of `per_lease` tests.
fn floor(args: &Args, per_lease: usize) -> anyhow::Result<Timed> {
    let floor = Floor::start(&simagent::spec("scale", args.tests), per_lease)?;
    let floor = &floor;
    let tests = args.tests;
    let timed = drive(&floor.url, args, 0.0, |shared| async move {
        shared.expected.store(tests as u64, Ordering::Relaxed);
        floor.open();
        tokio::time::timeout(Duration::from_secs(300), shared.all_reported.notified())
            .await
            .context("the floor's run did not end within 300 s")
    })?;
    println!(
        "{}",
        timed.line(
            &format!("the gRPC floor (no scheduler), leases of {per_lease} tests"),
            tests
        )
    );
    Ok(timed)
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    println!(
        "scale: {} simulated agents of {} slot(s), each on its own connection; one run of {} tests",
        args.agents, args.slots, args.tests
    );
    let (zero, zero_rss) = scenario(&testfleet, &args, 0.0)?;
    // As many leases as the coordinator made, so both runs make the same number of round trips.
    let per_lease = (args.tests as f64 / zero.leases.max(1) as f64).round() as usize;
    let floor = floor(&args, per_lease)?;
    let (busy, busy_rss) = scenario(&testfleet, &args, args.busy_test_ms)?;
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
            "near-zero tests, the floor: dispatch latency p99",
            floor.p99,
            "ms",
            Target::None,
        ),
        Figure::new(
            "scale",
            "near-zero tests: dispatch latency p99 / the floor's",
            zero.p99 / floor.p99,
            "×",
            Target::None,
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
            zero_rss.max(busy_rss),
            "MiB",
            Target::Below(500.0),
        ),
    ])
}
