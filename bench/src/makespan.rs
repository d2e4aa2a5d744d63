//! The makespan benchmark: a generated suite of tests that sleep for heavy-tailed (seeded
//! lognormal) durations, run on 4 local agents twice — cold (no history: every estimate is 1 s)
//! and warm (estimates from history) — and, beside them, split statically into 4 round-robin shards
//! run as 4 parallel processes (what `cargo nextest run --partition count:i/4` does). Each wall
//! time is divided by the schedule's lower bound, `max(Σ durations / 4, longest test)`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::figures::{Figure, Target};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Number of tests.
    #[arg(long, default_value_t = 200)]
    pub tests: usize,
    /// Total sleep across all tests, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub total_secs: f64,
    /// Lognormal shape: larger is more heavy-tailed.
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

const SLOTS: usize = 4;

fn durations(args: &Args) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let raw: Vec<f64> = (0..args.tests)
        .map(|_| {
            // Box–Muller for a standard normal, then exp for lognormal.
            let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (args.sigma * z).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter()
        .map(|r| ((r / sum) * args.total_secs * 1000.0).round().max(1.0) as u64)
        .collect()
}

fn write_suite(dir: &Path, ms: &[u64]) -> anyhow::Result<()> {
    let mut src = String::from("//! Generated: tests that sleep for heavy-tailed durations.\n");
    for (i, d) in ms.iter().enumerate() {
        src.push_str(&format!(
            "#[test]\nfn t{i:04}() {{ std::thread::sleep(std::time::Duration::from_millis({d})); }}\n"
        ));
    }
    crate::suite::write_crate(dir, "sleepsuite", &src)
}

/// One run on 4 local agents of 1 slot: (wall ms, lower bound ms) from the run's own summary.
fn testfleet_run(testfleet: &Path, suite: &Path, data: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(testfleet)
        .args([
            "run",
            "--local",
            "4",
            "--slots",
            "1",
            "--json",
            "--timeout",
            "600",
            "--manifest-path",
        ])
        .arg(suite.join("Cargo.toml"))
        .arg("--data-dir")
        .arg(data)
        .output()?;
    if !out.status.success() {
        bail!(
            "testfleet run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .context("no events")?
        .to_owned();
    let e: testfleet_model::RunEvent = serde_json::from_str(&last)?;
    match e.kind {
        testfleet_model::EventKind::RunFinished { summary, .. } => {
            Ok((summary.wall_ms, summary.lower_bound_ms()))
        }
        _ => bail!("the last event is not RunFinished"),
    }
}

/// Round-robin shards in name order, one process per shard, all at once: the wall of the slowest.
fn static_split(binary: &Path, tests: usize) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut children = Vec::new();
    for shard in 0..SLOTS {
        let names: Vec<String> = (0..tests)
            .filter(|i| i % SLOTS == shard)
            .map(|i| format!("t{i:04}"))
            .collect();
        children.push(
            Command::new(binary)
                .args(["--exact", "--test-threads", "1", "-q"])
                .args(&names)
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
    }
    for mut c in children {
        if !c.wait()?.success() {
            bail!("a static shard failed");
        }
    }
    Ok(started.elapsed().as_millis() as u64)
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let ms = durations(&args);
    let work = tempfile::tempdir()?;
    let suite = work.path().join("sleepsuite");
    write_suite(&suite, &ms)?;
    let sum: u64 = ms.iter().sum();
    let longest = *ms.iter().max().unwrap_or(&0);
    let bound = (sum / SLOTS as u64).max(longest);
    println!(
        "makespan: {} tests, Σ {:.1}s, longest {:.1}s, lognormal σ={} seed {}; {SLOTS} slots; lower bound {:.1}s",
        ms.len(),
        sum as f64 / 1000.0,
        longest as f64 / 1000.0,
        args.sigma,
        args.seed,
        bound as f64 / 1000.0
    );
    let data = work.path().join("data");
    let (cold, cold_bound) = testfleet_run(&testfleet, &suite, &data)?;
    let (warm, warm_bound) = testfleet_run(&testfleet, &suite, &data)?;
    let binary = crate::suite::test_binary(&suite)?;
    let split = static_split(&binary, ms.len())?;
    let row = |what: &str, wall: u64, lb: u64| {
        println!(
            "  {what:<34} wall {:>7.2}s  lower bound {:>7.2}s  wall/bound {:.3}",
            wall as f64 / 1000.0,
            lb as f64 / 1000.0,
            wall as f64 / lb.max(1) as f64
        );
    };
    // testfleet's bound comes from the durations it measured (process start included); the static
    // split is held to the bound of the nominal sleeps.
    row("testfleet, cold (no history)", cold, cold_bound);
    row("testfleet, warm (with history)", warm, warm_bound);
    row("static split (partition count:i/4)", split, bound);
    let ratio = |wall: u64, lb: u64| wall as f64 / lb.max(1) as f64;
    let split_ratio = ratio(split, bound);
    Ok(vec![
        Figure::new(
            "makespan",
            "cold (no history): wall / lower bound",
            ratio(cold, cold_bound),
            "×",
            Target::AtMost(1.25),
        ),
        Figure::new(
            "makespan",
            "with history: wall / lower bound",
            ratio(warm, warm_bound),
            "×",
            Target::AtMost(1.05),
        ),
        Figure::new(
            "makespan",
            "static split count:i/4: wall / lower bound",
            split_ratio,
            "×",
            Target::None,
        ),
        Figure::new(
            "makespan",
            "with history / static split",
            ratio(warm, warm_bound) / split_ratio,
            "×",
            Target::Below(1.0),
        ),
    ])
}
