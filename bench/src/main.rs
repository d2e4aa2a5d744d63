//! `testfleet-bench`: benchmarks that print ratios measured side by side in one run, never timed
//! assertions. Method and latest results: `docs/benchmarks.md`.

mod bundles;
mod chaos;
mod containers;
mod coordinator_proc;
mod counting_proxy;
mod detection;
mod figures;
mod floor;
mod ingest;
mod makespan;
mod orders_example;
mod overhead;
mod process_fleet;
mod pytest_suite;
mod queries;
mod sandbox;
mod scale;
mod simagent;
mod simhistory;
mod soak;
mod suite;
mod turns;

use clap::{Parser, Subcommand};

use figures::Figure;

/// The coordinator's allocator, so that the transport floor (served from this process) allocates
/// as the coordinator does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "testfleet-bench",
    about = "testfleet's benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Every benchmark below but chaos and detection, then one table of figures and targets.
    All {
        /// Smaller sizes, a few minutes in all: for a quick check, not for the record.
        #[arg(long)]
        quick: bool,
        /// The testfleet binary [default: next to this one].
        #[arg(long)]
        testfleet: Option<std::path::PathBuf>,
    },
    /// Trivial tests side by side: cargo nextest, cargo test, testfleet (a process per test, and
    /// several tests per process).
    Overhead(overhead::Args),
    /// A pytest suite whose conftest is slow to import: plain pytest, pytest -n 2 (xdist) and
    /// testfleet --local 2 --slots 1.
    Pytest(pytest_suite::Args),
    /// The order-service example (pytest, PostgreSQL and Redis): plain pytest with its containers
    /// against testfleet --local 2.
    Orders(orders_example::Args),
    /// A heavy-tailed sleep suite on 4 local agents, cold and then with history: wall / lower bound.
    Makespan(makespan::Args),
    /// Simulated agents report results over gRPC to a coordinator persisting to sled: results/s.
    Ingest(ingest::Args),
    /// 1,000 simulated agents and 100,000 near-zero tests: dispatch latency and coordinator RSS.
    Scale(scale::Args),
    /// `flaky` and `timings --top 100` over a history of 100,000 tests × 100 runs.
    Queries(queries::Args),
    /// Tests that need a service container: scope agent, scope test, a container in every test.
    Containers(containers::Args),
    /// Simulated tests with known failure probabilities through the real history pipeline: how
    /// many flaky tests are found after 10, 50 and 100 runs, and how many stable ones are wrongly.
    Detection(detection::Args),
    /// Many runs while agents are SIGKILLed and the coordinator restarts: nothing may be lost
    /// or counted twice.
    Chaos(chaos::Args),
    /// Runs for a set time (10 minutes) while agents come and go and the coordinator restarts:
    /// results lost and duplicated, the coordinator's RSS over time and its open descriptors.
    Soak(soak::Args),
    /// What hermetic remote runs cost: per test with the agent's sandbox against without it, and
    /// each bundle's size and time to pack, upload, download and extract.
    Sandbox(sandbox::Args),
    /// A one-line change in a workspace of 40 crates: bytes uploaded and downloaded by the second
    /// remote run against the first, and the time to the first test, bundles of files against
    /// one archive per run.
    Bundles(bundles::Args),
}

fn main() -> anyhow::Result<()> {
    let figures = match Cli::parse().bench {
        Bench::All { quick, testfleet } => {
            let all = all(quick, testfleet)?;
            figures::print_table(&all);
            return Ok(());
        }
        Bench::Overhead(a) => overhead::run(a)?,
        Bench::Pytest(a) => pytest_suite::run(a)?,
        Bench::Orders(a) => orders_example::run(a)?,
        Bench::Makespan(a) => makespan::run(a)?,
        Bench::Ingest(a) => ingest::run(a)?,
        Bench::Scale(a) => scale::run(a)?,
        Bench::Queries(a) => queries::run(a)?,
        Bench::Containers(a) => containers::run(a)?,
        Bench::Sandbox(a) => sandbox::run(a)?,
        Bench::Bundles(a) => bundles::run(a)?,
        Bench::Detection(a) => return detection::run(a),
        Bench::Chaos(a) => return chaos::run(a),
        Bench::Soak(a) => return soak::run(a),
    };
    figures::print(&figures);
    Ok(())
}

/// Runs every benchmark that has targets; in quick mode with smaller sizes.
fn all(quick: bool, testfleet: Option<std::path::PathBuf>) -> anyhow::Result<Vec<Figure>> {
    let tf = || testfleet.clone();
    let mut out = Vec::new();
    let mut step = |figures: Vec<Figure>| {
        figures::print(&figures);
        println!();
        out.extend(figures);
    };
    step(overhead::run(overhead::Args {
        tests: 2000,
        jobs: None,
        rounds: if quick { 1 } else { 3 },
        batch: 50,
        testfleet: tf(),
    })?);
    step(makespan::run(makespan::Args {
        tests: if quick { 100 } else { 200 },
        total_secs: if quick { 40.0 } else { 120.0 },
        sigma: 1.0,
        seed: 7,
        testfleet: tf(),
    })?);
    step(ingest::run(ingest::Args {
        tests: if quick { 200_000 } else { 1_000_000 },
        runs: if quick { 2 } else { 10 },
        agents: 8,
        slots: 64,
        output_every: 0,
        output_bytes: 64 << 10,
        testfleet: tf(),
        coordinator_arg: Vec::new(),
    })?);
    step(scale::run(scale::Args {
        agents: 1000,
        tests: if quick { 20_000 } else { 100_000 },
        slots: 1,
        busy_test_ms: 100.0,
        testfleet: tf(),
    })?);
    step(queries::run(queries::Args {
        tests: if quick { 20_000 } else { 100_000 },
        runs: 100,
        calls: 5,
        seed: 3,
        testfleet: tf(),
    })?);
    step(sandbox::run(sandbox::Args {
        tests: 2000,
        jobs: None,
        rounds: if quick { 1 } else { 3 },
        own_workspace: !quick,
        testfleet: tf(),
    })?);
    step(bundles::run(bundles::Args {
        crates: if quick { 10 } else { 40 },
        asset_mib: 32,
        rounds: if quick { 1 } else { 2 },
        testfleet: tf(),
    })?);
    step(containers::run(containers::Args {
        tests: if quick { 20 } else { 100 },
        jobs: None,
        testfleet: tf(),
    })?);
    step(pytest_suite::run(pytest_suite::Args {
        files: if quick { 5 } else { 20 },
        tests: 20,
        import_ms: 500,
        test_ms: 10,
        module_fixture_ms: 0,
        workers: 2,
        rounds: if quick { 1 } else { 3 },
        testfleet: tf(),
    })?);
    step(orders_example::run(orders_example::Args {
        workers: 2,
        rounds: if quick { 1 } else { 5 },
        testfleet: tf(),
    })?);
    Ok(out)
}

/// The testfleet binary a benchmark drives: given, or next to this one.
/// The repository this benchmark was built from (its fixtures, its own workspace).
pub(crate) fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the repository")
        .to_path_buf()
}

pub(crate) fn testfleet_path(
    given: Option<std::path::PathBuf>,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has a directory")?
            .join("testfleet"),
    };
    if !path.is_file() {
        anyhow::bail!(
            "no testfleet binary at {} (build it: `cargo build --release -p testfleet`, or pass --testfleet)",
            path.display()
        );
    }
    Ok(path)
}
