//! What a one-line change costs a remote run, with bundles of files against one archive per run.
//! A generated workspace of many crates (each a library with unit tests and an integration test
//! binary, plus shared asset files) is built once. Per format, in alternating order each round: a
//! fresh coordinator and agent; a first remote run; one literal changed in one crate's
//! integration test and the workspace built again (outside what is timed); a second run. Bytes are
//! counted by proxies in front of the coordinator (the client's upload, the agent's download, as
//! the network carries them), and the time from `testfleet run` to its first test started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::coordinator_proc::CoordinatorProc;
use crate::counting_proxy::{self, Counts};
use crate::figures::{Figure, Target};
use crate::suite;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Crates in the generated workspace (each brings two test binaries).
    #[arg(long, default_value_t = 40)]
    pub crates: usize,
    /// MiB of asset files the tests read (fixtures that never change); 0 for none.
    #[arg(long, default_value_t = 32)]
    pub asset_mib: usize,
    /// Rounds; each runs both formats, in alternating order.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

/// The crate whose integration test changes between the two runs.
const CHANGED: usize = 7;

fn crate_name(i: usize) -> String {
    format!("c{i:02}")
}

/// The workspace: `crates` crates and the assets, built.
fn write_workspace(ws: &Path, crates: usize, asset_mib: usize) -> anyhow::Result<()> {
    let members: Vec<String> = (0..crates)
        .map(|i| format!("\"{}\"", crate_name(i)))
        .collect();
    std::fs::create_dir_all(ws)?;
    std::fs::write(
        ws.join("Cargo.toml"),
        format!(
            "[workspace]\nmembers = [{}]\nresolver = \"2\"\n",
            members.join(", ")
        ),
    )?;
    // Incompressible, as images and recorded fixtures are.
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..asset_mib {
        let dir = ws.join("assets");
        std::fs::create_dir_all(&dir)?;
        let bytes: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.join(format!("fixture-{i:03}.bin")), bytes)?;
    }
    for i in 0..crates {
        let name = crate_name(i);
        let dir = ws.join(&name);
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::create_dir_all(dir.join("tests"))?;
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        )?;
        std::fs::write(
            dir.join("src/lib.rs"),
            format!(
                "//! Generated crate {i}.\n\
                 pub fn mix(x: u64) -> u64 {{ x.wrapping_mul(6364136223846793005).rotate_left({r}) ^ {i} }}\n\
                 pub fn words(n: usize) -> Vec<String> {{ (0..n).map(|k| format!(\"w{{k}}-{i}\")).collect() }}\n\
                 #[cfg(test)]\nmod tests {{\n    use super::*;\n    \
                 #[test] fn mixes() {{ assert_ne!(mix(1), mix(2)); }}\n    \
                 #[test] fn counts() {{ assert_eq!(words(3).len(), 3); }}\n}}\n",
                r = i % 63 + 1
            ),
        )?;
        std::fs::write(dir.join("tests/it.rs"), integration_test(&name, 0))?;
    }
    Ok(())
}

fn integration_test(name: &str, version: u32) -> String {
    format!(
        "const GREETING: &str = \"hello, version {version}\";\n\
         #[test] fn greets() {{ assert!(GREETING.starts_with(\"hello\")); }}\n\
         #[test] fn mixes() {{ assert_ne!({name}::mix(3), 0); }}\n\
         #[test] fn reads_words() {{ assert_eq!({name}::words(2)[1], format!(\"w1-{{}}\", &{name}::words(1)[0][3..])); }}\n"
    )
}

fn build(ws: &Path) -> anyhow::Result<()> {
    let out = suite::cargo()
        .args(["test", "--no-run", "--workspace", "--manifest-path"])
        .arg(ws.join("Cargo.toml"))
        .output()?;
    if !out.status.success() {
        bail!(
            "building the workspace failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A coordinator and one agent, each reached through a counting proxy.
struct Fleet {
    coordinator: Option<CoordinatorProc>,
    agent: std::process::Child,
    client_url: String,
    client: Counts,
    agent_side: Counts,
}

impl Fleet {
    fn start(
        testfleet: &Path,
        dir: &Path,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let coordinator = CoordinatorProc::start(testfleet, &dir.join("coordinator"), &[])?;
        let upstream = coordinator
            .url
            .trim_start_matches("http://")
            .parse()
            .context("the coordinator's address")?;
        let (client_url, client) = counting_proxy::start(runtime, upstream)?;
        let (agent_url, agent_side) = counting_proxy::start(runtime, upstream)?;
        let agent = Command::new(testfleet)
            .args(["agent", "--coordinator", &agent_url, "--agent-id", "bench"])
            .args(["--slots", "2", "--no-docker", "--work-dir"])
            .arg(dir.join("agent"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("starting the agent")?;
        let fleet = Fleet {
            coordinator: Some(coordinator),
            agent,
            client_url,
            client,
            agent_side,
        };
        fleet.wait_for_agent(testfleet)?;
        Ok(fleet)
    }

    fn wait_for_agent(&self, testfleet: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let out = Command::new(testfleet)
                .args(["agents", "--json", "--coordinator", &self.client_url])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if started.elapsed().as_secs() > 60 {
                bail!("the agent did not connect within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// One remote run: its bytes up (client) and down (agent), and seconds to its first test.
    fn run(&self, testfleet: &Path, ws: &Path, format: &str) -> anyhow::Result<Moved> {
        let (up0, _) = self.client.get();
        let (_, down0) = self.agent_side.get();
        let started = Instant::now();
        let mut child = Command::new(testfleet)
            .args(["run", "--json", "--bundle-format", format])
            .args(["--coordinator", &self.client_url, "--manifest-path"])
            .arg(ws.join("Cargo.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut first_test = None;
        for line in BufReader::new(child.stdout.take().context("piped stdout")?).lines() {
            if first_test.is_none() && line?.contains("\"test_started\"") {
                first_test = Some(started.elapsed().as_secs_f64());
            }
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "the {format} run failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (up1, _) = self.client.get();
        let (_, down1) = self.agent_side.get();
        Ok(Moved {
            up: up1 - up0,
            down: down1 - down0,
            to_first_test: first_test.context("the run started no test")?,
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if let Some(c) = self.coordinator.take() {
            let _ = c.stop();
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Moved {
    up: u64,
    down: u64,
    to_first_test: f64,
}

/// One format's round: (first run, second run after the change).
fn round(
    testfleet: &Path,
    ws: &Path,
    dir: &Path,
    format: &str,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Moved, Moved)> {
    let changed = ws.join(crate_name(CHANGED)).join("tests/it.rs");
    std::fs::write(&changed, integration_test(&crate_name(CHANGED), 0))?;
    build(ws)?;
    // Each first run hashes every file, as a fresh checkout's would.
    let _ = std::fs::remove_file(ws.join("target/testfleet/digests.v1"));
    let fleet = Fleet::start(testfleet, dir, runtime)?;
    let first = fleet.run(testfleet, ws, format)?;
    std::fs::write(&changed, integration_test(&crate_name(CHANGED), 1))?;
    build(ws)?;
    let second = fleet.run(testfleet, ws, format)?;
    Ok((first, second))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let work = tempfile::tempdir()?;
    let ws = work.path().join("ws");
    write_workspace(&ws, args.crates, args.asset_mib)?;
    println!(
        "bundles: {} crates, {} MiB of assets; building…",
        args.crates, args.asset_mib
    );
    let started = Instant::now();
    build(&ws)?;
    println!("  built in {:.0} s", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results: Vec<(&str, Moved, Moved)> = Vec::new();
    for r in 0..args.rounds {
        let order = if r % 2 == 0 {
            ["archive", "files"]
        } else {
            ["files", "archive"]
        };
        for format in order {
            let dir = work.path().join(format!("{format}-{r}"));
            let (first, second) = round(&testfleet, &ws, &dir, format, &runtime)?;
            println!(
                "  round {r} {format:>7}: first run {:.1} MiB up, {:.1} MiB down, first test at {:.2} s; second run {:.2} MiB up, {:.2} MiB down, first test at {:.2} s",
                mib(first.up),
                mib(first.down),
                first.to_first_test,
                mib(second.up),
                mib(second.down),
                second.to_first_test
            );
            results.push((format, first, second));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let median_of = |format: &str, f: &dyn Fn(&Moved, &Moved) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(fm, ..)| *fm == format)
            .map(|(_, a, b)| f(a, b))
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    type Measure = fn(&Moved, &Moved) -> f64;
    // (what, unit, the target for bundles of files, how it is measured)
    let measures: [(&str, &'static str, Option<f64>, Measure); 5] = [
        (
            "second run's upload / first run's",
            "×",
            Some(0.05),
            |a, b| b.up as f64 / a.up as f64,
        ),
        (
            "second run's download per agent / first run's",
            "×",
            Some(0.05),
            |a, b| b.down as f64 / a.down as f64,
        ),
        ("first run's upload", "MiB", None, |a, _| mib(a.up)),
        ("time to the first test, first run", "s", None, |a, _| {
            a.to_first_test
        }),
        ("time to the first test, second run", "s", None, |_, b| {
            b.to_first_test
        }),
    ];
    let mut figures = Vec::new();
    for format in ["files", "archive"] {
        for (what, unit, target, measure) in measures {
            let target = match target {
                Some(t) if format == "files" => Target::AtMost(t),
                _ => Target::None,
            };
            figures.push(Figure::new(
                "bundles",
                format!("{format}: {what}"),
                median_of(format, &measure),
                unit,
                target,
            ));
        }
    }
    // Side by side, round by round: each round ran both formats on the same workspace.
    let mut ratios: Vec<f64> = (0..args.rounds)
        .map(|r| {
            let of = |format: &str| {
                results
                    .iter()
                    .filter(|(fm, ..)| *fm == format)
                    .nth(r)
                    .map(|(_, _, b)| b.to_first_test)
                    .unwrap_or(f64::NAN)
            };
            of("files") / of("archive")
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    figures.push(Figure::new(
        "bundles",
        "time to the first test after the change, files / archive",
        ratios[ratios.len() / 2],
        "×",
        Target::None,
    ));
    Ok(figures)
}
