//! The order-service example (`examples/orders-pytest`: 31 pytest tests against a real PostgreSQL
//! and Redis) side by side: plain `pytest` with the containers its script starts, the same with
//! `pytest -n N` (when pytest-xdist is installed), and `testfleet run --local N`, whose agents start
//! the containers themselves. Every wall includes the containers' start and removal.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::figures::{Figure, Target};
use crate::pytest_suite::python_has;
use crate::{suite, turns};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Workers: xdist's `-n`, testfleet's local agents.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Rounds; each contender's median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
enum Contender {
    Pytest,
    Xdist,
    Testfleet,
}

impl Contender {
    fn label(self, workers: usize) -> String {
        match self {
            Contender::Pytest => "pytest, its containers started by its script".to_owned(),
            Contender::Xdist => format!("pytest -n {workers}, the same containers"),
            Contender::Testfleet => format!("testfleet run --local {workers}"),
        }
    }

    fn command(self, testfleet: &Path, example: &Path, data: &Path, workers: usize) -> Command {
        let mut cmd = match self {
            Contender::Pytest | Contender::Xdist => {
                let mut cmd = Command::new("bash");
                cmd.args([
                    "services/pytest-with-services.sh",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                ]);
                if let Contender::Xdist = self {
                    cmd.args(["-n", &workers.to_string()]);
                }
                cmd
            }
            Contender::Testfleet => {
                let mut cmd = Command::new(testfleet);
                cmd.args(["run", "--local", &workers.to_string()])
                    .arg("--data-dir")
                    .arg(data);
                cmd
            }
        };
        cmd.current_dir(example);
        cmd
    }
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    if !["pytest", "flask", "psycopg", "redis"]
        .iter()
        .all(|m| python_has(m))
    {
        bail!(
            "the example's packages are needed: `pip install -r examples/orders-pytest/requirements.txt`"
        );
    }
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let example = crate::repo_root().join("examples/orders-pytest");
    let built = Command::new("sh")
        .arg("services/build-image.sh")
        .current_dir(&example)
        .status()
        .context("running services/build-image.sh")?;
    if !built.success() {
        bail!("services/build-image.sh failed ({built}): it needs root, debootstrap and Docker");
    }
    let mut all = vec![Contender::Pytest, Contender::Testfleet];
    if python_has("xdist") {
        all.insert(1, Contender::Xdist);
    } else {
        println!("  (pytest-xdist is not installed: `pytest -n` is left out)");
    }
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    println!(
        "orders: the order-service example's 31 tests with PostgreSQL and Redis, {} workers, {} rounds (median)",
        args.workers, args.rounds
    );
    let medians = turns::median_walls(all.len(), args.rounds, |i| {
        suite::timed(
            &mut all[i].command(&testfleet, &example, &data, args.workers),
            &format!("{:?}", all[i]),
        )
    })?;
    for (c, m) in all.iter().zip(&medians) {
        println!("  {:<62} wall {m:>7.3} s", c.label(args.workers));
    }
    let (pytest, testfleet) = (medians[0], medians[medians.len() - 1]);
    let mut figures = vec![Figure::new(
        "orders",
        "testfleet / plain pytest, containers included",
        testfleet / pytest,
        "×",
        Target::None,
    )];
    if medians.len() == 3 {
        figures.push(Figure::new(
            "orders",
            format!("testfleet / pytest -n {} (context)", args.workers),
            testfleet / medians[1],
            "×",
            Target::None,
        ));
    }
    Ok(figures)
}
