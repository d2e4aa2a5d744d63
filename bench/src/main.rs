//! `testfleet-bench`: benchmarks that print ratios measured side by side in one run, never timed
//! assertions. Method and latest results: `docs/benchmarks.md`.

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Makespan(a) => makespan::run(a),
        Bench::Detection(a) => detection::run(a),
    }
}
