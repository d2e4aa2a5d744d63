//! The query benchmark: a history of many tests × many runs is written through the real history
//! writer into sled (1% of the tests flaky, durations spread over three orders of magnitude), then
//! a real coordinator process serves it and `flaky` and `timings --top 100` are timed over gRPC.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use testfleet_coordinator::SledStore;
use testfleet_coordinator::history::spawn_writer;
use testfleet_proto::pb;

use crate::coordinator_proc::CoordinatorProc;
use crate::figures::{Figure, Target};
use crate::simagent;
use crate::simhistory::{Attempt, send_run};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 100_000)]
    pub tests: usize,
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    /// Timed calls of each query; the median and the slowest are reported.
    #[arg(long, default_value_t = 5)]
    pub calls: usize,
    #[arg(long, default_value_t = 3)]
    pub seed: u64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

const SUITE: &str = "big";

fn populate(args: &Args, dir: &std::path::Path) -> anyhow::Result<f64> {
    let store = Arc::new(SledStore::open(dir)?);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let names: Vec<String> = (0..args.tests)
        .map(|i| format!("module_{:03}::test_{i:07}", i % 997))
        .collect();
    // Each test's typical duration: 1 ms to ~1 s, log-uniform.
    let base: Vec<f64> = (0..args.tests)
        .map(|_| 10f64.powf(rng.f64() * 3.0))
        .collect();
    let flaky: Vec<bool> = (0..args.tests).map(|_| rng.f64() < 0.01).collect();
    let started = Instant::now();
    let mut attempts = 0u64;
    for run in 1..=args.runs {
        // A writer per run, joined before the next: the queue of updates stays one run long.
        let (tx, writer) = spawn_writer(store.clone(), None);
        let tests: Vec<(String, Vec<Attempt>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ms = |r: f64| (base[i] * (0.8 + 0.4 * r)) as u64;
                let first = Attempt {
                    failed: flaky[i] && rng.f64() < 0.1,
                    ms: ms(rng.f64()),
                };
                let mut a = vec![first];
                if first.failed {
                    a.push(Attempt {
                        failed: false,
                        ms: ms(rng.f64()),
                    });
                }
                (name.clone(), a)
            })
            .collect();
        attempts += tests.iter().map(|(_, a)| a.len() as u64).sum::<u64>();
        send_run(&tx, run, SUITE, &tests, 64)?;
        drop(tx);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the history writer panicked"))?;
    }
    Ok(attempts as f64 / started.elapsed().as_secs_f64())
}

fn timed<T>(
    calls: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, f64, T)> {
    let mut last = f()?; // warm-up
    let mut ms = Vec::new();
    for _ in 0..calls.max(1) {
        let t = Instant::now();
        last = f()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[ms.len() - 1], last))
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let data = work.path().join("coordinator");
    println!(
        "queries: history of {} tests × {} runs (1% flaky), written through the history writer",
        args.tests, args.runs
    );
    let rate = populate(&args, &data)?;
    println!("  written at {rate:.0} attempts/s");
    let coordinator = CoordinatorProc::start(&testfleet, &data, &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut client = rt.block_on(async {
        anyhow::Ok(simagent::client(simagent::channel(&coordinator.url).await?))
    })?;
    let mut c2 = client.clone();
    let (flaky_med, flaky_max, flaky) = timed(args.calls, || {
        rt.block_on(async {
            let r = client
                .list_flaky(pb::FlakyQuery {
                    suite: SUITE.into(),
                })
                .await?;
            anyhow::Ok(r.into_inner().tests.len())
        })
    })?;
    let (top_med, top_max, top) = timed(args.calls, || {
        rt.block_on(async {
            let r = c2
                .get_timings(pb::TimingsQuery {
                    suite: SUITE.into(),
                    top: 100,
                    slowdowns_only: false,
                })
                .await?;
            anyhow::Ok(r.into_inner().tests.len())
        })
    })?;
    drop(client);
    drop(c2);
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    coordinator.stop()?;
    println!(
        "  flaky: {flaky} tests listed, median {flaky_med:.1} ms, slowest {flaky_max:.1} ms; timings --top 100: {top} listed, median {top_med:.1} ms, slowest {top_max:.1} ms"
    );
    if flaky == 0 || top != 100 {
        anyhow::bail!("the queries did not find what was written (flaky {flaky}, top {top})");
    }
    Ok(vec![
        Figure::new(
            "queries",
            "history writer, attempts/s (context)",
            rate,
            "attempts/s",
            Target::None,
        ),
        Figure::new(
            "queries",
            "flaky, median latency",
            flaky_med,
            "ms",
            Target::Below(200.0),
        ),
        Figure::new(
            "queries",
            "timings --top 100, median latency",
            top_med,
            "ms",
            Target::Below(200.0),
        ),
    ])
}
