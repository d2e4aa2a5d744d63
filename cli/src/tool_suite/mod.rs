//! Suites run by a tool that writes JUnit instead of Cargo (the manifest's `[runner]`): listing
//! their tests (pytest's collection, or the suite's own `list` command) and how agents run them.

mod command;
mod pytest;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use testfleet_model::manifest::{SuiteRunner, Tool};
use testfleet_model::{IdStyle, Runner};

use crate::cargo::ListedTest;
use crate::error::{CliError, CliResult};

/// Tests per process for a tool's suite unless `--tests-per-process` says otherwise: a tool's
/// start-up (an interpreter, its plugins, the suite's imports) is paid once per batch, and for
/// pytest, batch mode means long-lived workers that pay it once per worker.
pub const DEFAULT_BATCH: u32 = 100;

/// A tool suite's tests, by binary (pytest: one per file), and how to run them.
pub struct Listed {
    /// The program as the manifest names it: a bare name (on the agents' PATH) or a path
    /// relative to the manifest's directory.
    pub program: String,
    pub runner: Runner,
    pub env: BTreeMap<String, String>,
    pub binaries: Vec<(String, Vec<ListedTest>)>,
}

/// Lists the suite's tests by running the tool in `dir`, the manifest's directory.
pub fn list(runner: &SuiteRunner, dir: &Path) -> CliResult<Listed> {
    let env = env_of(runner);
    match &runner.tool {
        Tool::Pytest {
            python,
            paths,
            args,
            dist,
        } => {
            let binaries = pytest::collect(python, paths, args, *dist, dir, &env)?;
            Ok(Listed {
                program: python.clone(),
                runner: Runner::Junit {
                    args: pytest::run_args(args),
                    ids: IdStyle::Pytest,
                },
                env,
                binaries,
            })
        }
        Tool::Command { binary, list, run } => {
            let tests = command::list(list, dir, &env)?;
            Ok(Listed {
                program: run[0].clone(),
                runner: Runner::Junit {
                    args: run[1..].to_vec(),
                    ids: IdStyle::Plain,
                },
                env,
                binaries: vec![(binary.clone(), tests)],
            })
        }
    }
}

/// The tests' environment: the manifest's, and no bytecode files written into a shared bundle.
fn env_of(runner: &SuiteRunner) -> BTreeMap<String, String> {
    let mut env = runner.env.clone();
    if matches!(runner.tool, Tool::Pytest { .. }) {
        env.entry("PYTHONDONTWRITEBYTECODE".into())
            .or_insert_with(|| "1".into());
    }
    env
}

/// Runs a listing command in `dir`: its exit code (one of `ok`) and stdout, or an error that shows
/// what it printed.
fn run_listing(
    argv: &[String],
    ok: &[i32],
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> CliResult<(i32, String)> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .envs(env)
        .output()
        .map_err(|e| {
            CliError::TestListFailed(format!(
                "cannot run `{}` in {} to list the tests: {e}",
                argv[0],
                dir.display()
            ))
        })?;
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !ok.contains(&code) {
        return Err(listing_failed(
            argv,
            &out.status.to_string(),
            &stdout,
            &out.stderr,
        ));
    }
    Ok((code, stdout))
}

fn listing_failed(argv: &[String], status: &str, stdout: &str, stderr: &[u8]) -> CliError {
    let tail = |s: &str| {
        let lines: Vec<&str> = s.trim().lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    CliError::TestListFailed(format!(
        "`{}` failed to list the tests ({status}):\n{}\n{}",
        argv.join(" "),
        tail(stdout),
        tail(&String::from_utf8_lossy(stderr))
    ))
}
