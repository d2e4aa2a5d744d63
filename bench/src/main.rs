//! `testfleet-bench`: benchmarks that print ratios measured side by side in one run, never timed
//! assertions. Method and latest results: `docs/benchmarks.md`.

mod chaos;
mod detection;
mod makespan;

use clap::{Parser, Subcommand};

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
    /// A heavy-tailed sleep suite on 4 local agents, cold and then with history: wall / lower bound.
    Makespan(makespan::Args),
    /// Simulated tests with known failure probabilities through the real history pipeline: how
    /// many flaky tests are found after 10, 50 and 100 runs, and how many stable ones are wrongly.
    Detection(detection::Args),
    /// Many runs while agents are SIGKILLed and the coordinator restarts: nothing may be lost
    /// or counted twice.
    Chaos(chaos::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Makespan(a) => makespan::run(a),
        Bench::Detection(a) => detection::run(a),
        Bench::Chaos(a) => chaos::run(a),
    }
}

/// The testfleet binary a benchmark drives: given, or next to this one.
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
