//! The per-test overhead benchmark: one generated test binary of trivial tests, run side by side
//! with the same parallelism by `cargo nextest run`, `cargo test` and `testfleet run --local 1`
//! (one process per test, and the opt-in mode that runs several tests per process). Contenders
//! take turns, each round in a new order, and the median wall time of each is compared with
//! nextest's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::figures::{Figure, Target};
use crate::suite;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Number of trivial tests in the generated binary.
    #[arg(long, default_value_t = 2000)]
    pub tests: usize,
    /// Tests run at once by every contender [default: the number of CPUs].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Rounds; each contender's median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Tests per process in testfleet's batch mode.
    #[arg(long, default_value_t = 50)]
    pub batch: u32,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Nextest,
    CargoTest,
    Testfleet,
    TestfleetBatch,
}

impl Contender {
    fn label(self, jobs: usize, batch: u32) -> String {
        match self {
            Contender::Nextest => format!("cargo nextest run --test-threads {jobs}"),
            Contender::CargoTest => format!("cargo test -- --test-threads {jobs}"),
            Contender::Testfleet => format!("testfleet run --local 1 --slots {jobs}"),
            Contender::TestfleetBatch => {
                format!("testfleet run --local 1 --slots {jobs} --tests-per-process {batch}")
            }
        }
    }
}

pub(crate) fn lib_rs(tests: usize) -> String {
    let mut src = String::from("//! Generated: trivial tests, to measure per-test overhead.\n");
    for i in 0..tests {
        src.push_str(&format!(
            "#[test]\nfn t{i:05}() {{ assert_eq!(std::hint::black_box({i}u64) + 1, {}); }}\n",
            i + 1
        ));
    }
    src
}

struct Setup<'a> {
    testfleet: &'a Path,
    manifest: PathBuf,
    data: PathBuf,
    jobs: usize,
    batch: u32,
}

fn command(c: Contender, s: &Setup<'_>) -> Command {
    let jobs = s.jobs.to_string();
    match c {
        Contender::Nextest => {
            let mut cmd = suite::cargo();
            cmd.args(["nextest", "run", "--test-threads", &jobs, "--manifest-path"])
                .arg(&s.manifest);
            cmd
        }
        Contender::CargoTest => {
            let mut cmd = suite::cargo();
            cmd.args(["test", "--manifest-path"])
                .arg(&s.manifest)
                .args(["--", "--test-threads", &jobs]);
            cmd
        }
        Contender::Testfleet | Contender::TestfleetBatch => {
            let mut cmd = Command::new(s.testfleet);
            cmd.args(["run", "--local", "1", "--slots", &jobs, "--manifest-path"])
                .arg(&s.manifest)
                .arg("--data-dir")
                .arg(&s.data);
            if c == Contender::TestfleetBatch {
                cmd.args(["--tests-per-process", &s.batch.to_string()]);
            }
            cmd
        }
    }
}

fn time(c: Contender, s: &Setup<'_>) -> anyhow::Result<f64> {
    suite::timed(&mut command(c, s), &format!("{c:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    if !suite::have_nextest() {
        bail!("cargo-nextest is not installed: `cargo install cargo-nextest --locked`");
    }
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let work = tempfile::tempdir()?;
    let dir = work.path().join("tinysuite");
    suite::write_crate(&dir, "tinysuite", &lib_rs(args.tests))?;
    suite::test_binary(&dir)?;
    let setup = Setup {
        testfleet: &testfleet,
        manifest: dir.join("Cargo.toml"),
        data: work.path().join("data"),
        jobs,
        batch: args.batch,
    };
    println!(
        "overhead: {} trivial tests in one binary, {jobs} at a time, {} rounds (median)",
        args.tests, args.rounds
    );
    let all = [
        Contender::Nextest,
        Contender::CargoTest,
        Contender::Testfleet,
        Contender::TestfleetBatch,
    ];
    // One warm-up of each (page cache, history's first run), not counted.
    for c in all {
        time(c, &setup)?;
    }
    let mut walls: Vec<Vec<f64>> = vec![vec![]; all.len()];
    for round in 0..args.rounds.max(1) {
        for k in 0..all.len() {
            let i = (k + round) % all.len();
            walls[i].push(time(all[i], &setup)?);
        }
    }
    let medians: Vec<f64> = walls.into_iter().map(median).collect();
    let nextest = medians[0];
    for (c, m) in all.iter().zip(&medians) {
        println!("  {:<62} wall {m:>7.3} s", c.label(jobs, args.batch));
    }
    Ok(vec![
        Figure::new(
            "overhead",
            "cargo test / nextest (context)",
            medians[1] / nextest,
            "×",
            Target::None,
        ),
        Figure::new(
            "overhead",
            "testfleet, a process per test / nextest",
            medians[2] / nextest,
            "×",
            Target::AtMost(1.05),
        ),
        Figure::new(
            "overhead",
            format!("testfleet, {} tests per process / nextest", args.batch),
            medians[3] / nextest,
            "×",
            Target::AtMost(0.5),
        ),
    ])
}
