//! A pytest suite with a costly start-up, run side by side by plain `pytest`, `pytest -n N`
//! (pytest-xdist) and `testfleet run --local N --slots 1`: a generated suite of FILES files of
//! TESTS tests each, whose `conftest.py` takes a while to import (as a real application's imports
//! do). Contenders take turns, each round in a new order; each one's median wall is compared with
//! xdist's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::figures::{Figure, Target};
use crate::{suite, turns};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Test files in the generated suite.
    #[arg(long, default_value_t = 20)]
    pub files: usize,
    /// Tests in each file.
    #[arg(long, default_value_t = 20)]
    pub tests: usize,
    /// What importing the suite's conftest.py costs, in ms.
    #[arg(long, default_value_t = 500)]
    pub import_ms: u64,
    /// What each test takes, in ms.
    #[arg(long, default_value_t = 10)]
    pub test_ms: u64,
    /// What each file's module-scoped fixture (used by all its tests) takes to set up, in ms;
    /// 0: none.
    #[arg(long, default_value_t = 0)]
    pub module_fixture_ms: u64,
    /// Workers: xdist's `-n`, testfleet's local agents (of one slot each).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Rounds; each contender's median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Pytest,
    Xdist,
    Testfleet,
}

impl Contender {
    fn label(self, workers: usize) -> String {
        match self {
            Contender::Pytest => "pytest".to_owned(),
            Contender::Xdist => format!("pytest -n {workers} (pytest-xdist)"),
            Contender::Testfleet => format!("testfleet run --local {workers} --slots 1"),
        }
    }
}

/// Writes the suite: `testfleet.toml`, the slow `conftest.py`, and the test files.
fn write_suite(dir: &Path, a: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::write(
        dir.join("testfleet.toml"),
        "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n",
    )?;
    std::fs::write(
        dir.join("tests/conftest.py"),
        format!(
            "# Generated: stands for an application's imports.\nimport time\ntime.sleep({})\n",
            a.import_ms as f64 / 1000.0
        ),
    )?;
    for f in 0..a.files {
        let mut src = String::from("import time\n");
        if a.module_fixture_ms > 0 {
            src.push_str(&format!(
                "import pytest\n\n@pytest.fixture(scope='module', autouse=True)\n\
                 def module_resource():\n    time.sleep({})\n",
                a.module_fixture_ms as f64 / 1000.0
            ));
        }
        for t in 0..a.tests {
            src.push_str(&format!(
                "\ndef test_{t:03}():\n    time.sleep({})\n",
                a.test_ms as f64 / 1000.0
            ));
        }
        std::fs::write(dir.join(format!("tests/test_f{f:02}.py")), src)?;
    }
    Ok(())
}

/// Whether `python3` can import `module`.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn command(c: Contender, testfleet: &Path, dir: &Path, data: &Path, workers: usize) -> Command {
    let pytest = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(dir);
        cmd
    };
    match c {
        Contender::Pytest => pytest(),
        Contender::Xdist => {
            let mut cmd = pytest();
            cmd.args(["-n", &workers.to_string()]);
            cmd
        }
        Contender::Testfleet => {
            let mut cmd = Command::new(testfleet);
            cmd.args(["run", "--local", &workers.to_string(), "--slots", "1"])
                .arg("--data-dir")
                .arg(data)
                .current_dir(dir);
            cmd
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    if !python_has("pytest") || !python_has("xdist") {
        bail!("pytest and pytest-xdist are needed: `pip install pytest pytest-xdist`");
    }
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("pysuite");
    write_suite(&dir, &args)?;
    let data = work.path().join("data");
    println!(
        "pytest: {} tests in {} files, a {} ms conftest import, a {} ms module fixture, {} ms tests, {} workers, {} rounds (median)",
        args.files * args.tests,
        args.files,
        args.import_ms,
        args.module_fixture_ms,
        args.test_ms,
        args.workers,
        args.rounds
    );
    let all = [Contender::Pytest, Contender::Xdist, Contender::Testfleet];
    let medians = turns::median_walls(all.len(), args.rounds, |i| {
        suite::timed(
            &mut command(all[i], &testfleet, &dir, &data, args.workers),
            &format!("{:?}", all[i]),
        )
    })?;
    for (c, m) in all.iter().zip(&medians) {
        println!("  {:<62} wall {m:>7.3} s", c.label(args.workers));
    }
    let (pytest, xdist, testfleet) = (medians[0], medians[1], medians[2]);
    Ok(vec![
        Figure::new(
            "pytest",
            format!("testfleet / pytest -n {}", args.workers),
            testfleet / xdist,
            "×",
            Target::AtMost(1.0),
        ),
        Figure::new(
            "pytest",
            "testfleet / plain pytest (context)",
            testfleet / pytest,
            "×",
            Target::None,
        ),
        Figure::new(
            "pytest",
            format!("pytest -n {} / plain pytest (context)", args.workers),
            xdist / pytest,
            "×",
            Target::None,
        ),
    ])
}
