//! What hermetic remote runs cost. Per test: the overhead benchmark's trivial tests run remotely on
//! one agent with its sandbox (a namespace per run, tests started by its helper) and on one without
//! (`--no-sandbox`), in alternating pairs; each side's per-test cost is its whole run less a
//! one-test run of the same suite, over the tests in between. Per bundle: for the `hermetic`
//! fixture crate and for testfleet's own workspace, the bundle's size, the time of a submission
//! that lists, packs and uploads it, of which the upload (the same submission to a coordinator
//! that already has the bundle takes that much less), and the time to download, verify and
//! extract it as an agent does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use testfleet_proto::pb;

use crate::coordinator_proc::CoordinatorProc;
use crate::figures::{Figure, Target};
use crate::suite;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Number of trivial tests in the generated binary.
    #[arg(long, default_value_t = 2000)]
    pub tests: usize,
    /// Tests run at once on the agent [default: the number of CPUs].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Alternating pairs; each side's median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also measure the bundle of testfleet's own workspace (builds its tests first).
    #[arg(long)]
    pub own_workspace: bool,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

/// A coordinator and one agent, with or without a sandbox.
struct Fleet {
    coordinator: CoordinatorProc,
    agent: std::process::Child,
}

impl Fleet {
    fn start(testfleet: &Path, dir: &Path, jobs: usize, sandbox: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let coordinator = CoordinatorProc::start(testfleet, &dir.join("coordinator"), &[])?;
        let mut cmd = Command::new(testfleet);
        cmd.args([
            "agent",
            "--coordinator",
            &coordinator.url,
            "--agent-id",
            "bench",
        ])
        .args(["--slots", &jobs.to_string(), "--no-docker", "--work-dir"])
        .arg(dir.join("agent"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?);
        if !sandbox {
            cmd.arg("--no-sandbox");
        }
        let agent = cmd.spawn().context("starting the agent")?;
        let fleet = Fleet { coordinator, agent };
        fleet.wait_for_agent(testfleet, sandbox)?;
        Ok(fleet)
    }

    /// Waits until the agent is connected, and checks it has (or lacks) its sandbox as asked.
    fn wait_for_agent(&self, testfleet: &Path, sandbox: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let out = Command::new(testfleet)
                .args(["agents", "--json", "--coordinator", &self.coordinator.url])
                .output()?;
            if let Some(line) = String::from_utf8_lossy(&out.stdout).lines().next() {
                let a: serde_json::Value = serde_json::from_str(line)?;
                let has = a["sandbox_status"] == "";
                if has != sandbox {
                    bail!("the agent's sandbox is not as asked: {line}");
                }
                return Ok(());
            }
            if started.elapsed().as_secs() > 60 {
                bail!("the agent did not connect within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// One remote run of `manifest` (tests matching `filter`), its wall time in seconds.
    fn run(&self, testfleet: &Path, manifest: &Path, filter: Option<&str>) -> anyhow::Result<f64> {
        suite::timed(
            Command::new(testfleet)
                .args([
                    "run",
                    "--coordinator",
                    &self.coordinator.url,
                    "--manifest-path",
                ])
                .arg(manifest)
                .args(filter),
            "remote run",
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let work = tempfile::tempdir()?;
    let dir = work.path().join("tinysuite");
    suite::write_crate(&dir, "tinysuite", &crate::overhead::lib_rs(args.tests))?;
    suite::test_binary(&dir)?;
    let manifest = dir.join("Cargo.toml");
    let with = Fleet::start(&testfleet, &work.path().join("with"), jobs, true)?;
    let without = Fleet::start(&testfleet, &work.path().join("without"), jobs, false)?;
    println!(
        "sandbox: {} trivial tests on one agent × {jobs} slots, with and without its sandbox, {} alternating pairs (median)",
        args.tests, args.rounds
    );
    let fleets = [&with, &without];
    // Warm-up: the bundle uploaded and cached on both sides, not counted.
    for f in fleets {
        f.run(&testfleet, &manifest, None)?;
    }
    let mut per_test: [Vec<f64>; 2] = [vec![], vec![]];
    for round in 0..args.rounds.max(1) {
        for k in 0..2 {
            let i = (k + round) % 2;
            let all = fleets[i].run(&testfleet, &manifest, None)?;
            let one = fleets[i].run(&testfleet, &manifest, Some("t00000"))?;
            per_test[i].push((all - one) / (args.tests.max(2) - 1) as f64);
        }
    }
    let [sandboxed, plain] = per_test.map(median);
    println!(
        "  per test: {:.3} ms with the sandbox, {:.3} ms without",
        sandboxed * 1e3,
        plain * 1e3
    );
    drop((with, without));
    let mut figures = vec![Figure::new(
        "sandbox",
        "per-test cost, sandbox / none",
        sandboxed / plain,
        "×",
        Target::AtMost(1.10),
    )];

    let fixture = work.path().join("hermetic");
    copy_dir(
        &crate::repo_root().join("tests/fixtures/hermetic"),
        &fixture,
    )?;
    let mut workspaces = vec![("hermetic fixture", fixture.join("Cargo.toml"))];
    if args.own_workspace {
        workspaces.push(("testfleet workspace", crate::repo_root().join("Cargo.toml")));
    }
    for (name, manifest) in workspaces {
        figures.extend(bundle_figures(&testfleet, work.path(), name, &manifest)?);
    }
    Ok(figures)
}

/// The size of one workspace's bundle, and what moving it costs.
fn bundle_figures(
    testfleet: &Path,
    work: &Path,
    name: &'static str,
    manifest: &Path,
) -> anyhow::Result<Vec<Figure>> {
    let data = work.join(format!("bundle-{}", name.replace([' ', '\''], "-")));
    std::fs::create_dir_all(&data)?;
    let coordinator = CoordinatorProc::start(testfleet, &data.join("coordinator"), &[])?;
    // The build itself is not what is measured: once before, so both submissions find it done.
    let built = suite::cargo()
        .args(["test", "--no-run", "--manifest-path"])
        .arg(manifest)
        .output()?;
    if !built.status.success() {
        bail!(
            "building {name} failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    let submit = || -> anyhow::Result<(f64, String)> {
        let started = Instant::now();
        let out = Command::new(testfleet)
            .args([
                "run",
                "--detach",
                // One archive: what this benchmark measures (`bundles` measures bundles of files).
                "--bundle-format",
                "archive",
                "--coordinator",
                &coordinator.url,
                "--manifest-path",
            ])
            .arg(manifest)
            .output()?;
        let secs = started.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("submitting {name} failed:\n{err}");
        }
        Ok((secs, err))
    };
    let (first, log) = submit()?;
    let (again, _) = submit()?;
    let files = log
        .lines()
        .find(|l| l.starts_with("bundle: "))
        .context("the run says the bundle's size")?
        .trim_start_matches("bundle: ")
        .to_owned();
    let (digest, bytes) = log
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("bundle ")?;
            let (short, rest) = rest.split_once(" (")?;
            let (bytes, _) = rest.split_once(" bytes)")?;
            Some((short.to_owned(), bytes.parse::<u64>().ok()?))
        })
        .context("the run says the bundle's digest and size")?;
    let download = download_and_extract(&coordinator.url, &digest, &data)?;
    println!(
        "  bundle of the {name}: {files}, {:.1} MiB compressed; submission {first:.2} s uploading, {again:.2} s when present; download + verify + extract {download:.2} s",
        bytes as f64 / (1u64 << 20) as f64
    );
    Ok(vec![
        Figure::new(
            "sandbox",
            format!("{name}: bundle, compressed"),
            bytes as f64 / (1u64 << 20) as f64,
            "MiB",
            Target::None,
        ),
        Figure::new(
            "sandbox",
            format!("{name}: submission (list, pack, upload)"),
            first,
            "s",
            Target::None,
        ),
        Figure::new(
            "sandbox",
            format!("{name}: of which the upload"),
            first - again,
            "s",
            Target::None,
        ),
        Figure::new(
            "sandbox",
            format!("{name}: download + verify + extract"),
            download,
            "s",
            Target::None,
        ),
    ])
}

/// Downloads a bundle named by its short digest as an agent does, and extracts it; seconds.
fn download_and_extract(url: &str, short: &str, dir: &Path) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client = crate::simagent::client(crate::simagent::channel(url).await?);
        // The full digest from the coordinator's store: the run prints only its first 12 digits.
        let store = dir.join("coordinator");
        let digest = find_digest(&store, short)?;
        let started = Instant::now();
        let mut stream = client
            .download_bundle(pb::BundleRef {
                digest: digest.clone(),
            })
            .await?
            .into_inner();
        let archive = dir.join("download.tar.zst");
        let mut file = std::fs::File::create(&archive)?;
        while let Some(chunk) = stream.message().await? {
            std::io::Write::write_all(&mut file, &chunk.data)?;
        }
        file.sync_all()?;
        drop(file);
        testfleet_bundle::extract(
            &archive,
            &digest,
            &dir.join("extracted"),
            Default::default(),
        )?;
        Ok(started.elapsed().as_secs_f64())
    })
}

fn find_digest(dir: &Path, short: &str) -> anyhow::Result<String> {
    for e in walk(dir) {
        let name = e
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(short) && name.len() >= 64 {
            return Ok(name[..64].to_owned());
        }
    }
    bail!("no bundle {short} under {}", dir.display())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        }
        out.push(e.path());
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == "target" {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
