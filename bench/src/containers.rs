//! The containers benchmark: tests that each need a key-value server in a container, run three
//! ways through `testfleet run` with the same agent and slots — the service at scope `agent` (one
//! container per agent, shared), at scope `test` (a fresh container per test), and with no service
//! declared, each test starting its own container with `docker run` and removing it after (what a
//! suite without testfleet does). The server is the kvstore example's, built statically into a
//! `FROM scratch` image here: nothing is pulled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::figures::{Figure, Target};
use crate::suite;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    pub tests: usize,
    /// Tests run at once [default: the number of CPUs].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// The testfleet binary [default: next to this one].
    #[arg(long)]
    pub testfleet: Option<PathBuf>,
}

const IMAGE: &str = "testfleet-bench-kvstore:latest";

fn manifest(scope: &str) -> String {
    format!(
        "[[service]]\nname = \"kv\"\nbuild = \"docker\"\nports = [7070]\nwait = {{ log = \"kvstore listening\" }}\n\
         startup_timeout = 60\nscope = \"{scope}\"\nexports = {{ KV_ADDR = \"{{host}}:{{port:7070}}\" }}\n\
         binaries = [\"kvbench::uses_service\"]\n"
    )
}

/// The talk every test has with its server: a write and a read of a key of its own.
const CLIENT: &str = r#"
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

pub fn round_trip(addr: &str, key: &str) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    writeln!(w, "SET {key} v")?;
    reader.read_line(&mut line)?;
    if line.trim() != "OK" {
        return Err(std::io::Error::other(format!("SET answered {line:?}")));
    }
    line.clear();
    writeln!(w, "GET {key}")?;
    reader.read_line(&mut line)?;
    assert_eq!(line.trim(), "VALUE v");
    Ok(())
}
"#;

const OWN_CONTAINER: &str = r#"
use std::process::Command;
use std::time::{Duration, Instant};

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts the server in a container of its own, waits until it answers, and removes it after.
pub fn with_own_server(key: &str) {
    let id = docker(&["run", "-d", "--rm", "-p", "127.0.0.1::7070", &std::env::var("KV_IMAGE").unwrap()]);
    let port = docker(&["port", &id, "7070/tcp"]);
    let addr = port.lines().next().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kvbench::round_trip(&addr, key) {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the server never answered: {e}"),
        }
    }
    docker(&["rm", "-f", &id]);
}
"#;

fn write_suite(dir: &Path, tests: usize) -> anyhow::Result<()> {
    suite::write_crate(dir, "kvbench", CLIENT)?;
    std::fs::create_dir_all(dir.join("tests"))?;
    let mut uses = String::from("//! Generated: tests of a server testfleet starts for them.\n");
    let mut own = format!("//! Generated: tests that start their own server.\n{OWN_CONTAINER}");
    for i in 0..tests {
        uses.push_str(&format!(
            "#[test]\nfn svc_{i:04}() {{ kvbench::round_trip(&std::env::var(\"KV_ADDR\").unwrap(), \"k{i}\").unwrap(); }}\n"
        ));
        own.push_str(&format!(
            "#[test]\nfn own_{i:04}() {{ with_own_server(\"k{i}\"); }}\n"
        ));
    }
    std::fs::write(dir.join("tests/uses_service.rs"), uses)?;
    std::fs::write(dir.join("tests/own_container.rs"), own)?;
    std::fs::write(dir.join("agent.toml"), manifest("agent"))?;
    std::fs::write(dir.join("test.toml"), manifest("test"))?;
    std::fs::write(
        dir.join("none.toml"),
        "# no services: the tests start their own\n",
    )?;
    Ok(())
}

/// Builds the kvstore server statically into the suite's docker context, and the image the
/// own-container tests start.
fn build_server(repo: &Path, dir: &Path) -> anyhow::Result<()> {
    let example = repo.join("examples/kvstore");
    let status = Command::new("sh")
        .arg("docker/build-server.sh")
        .current_dir(&example)
        .status()
        .context("building the kvstore server")?;
    if !status.success() {
        bail!("building the kvstore server failed");
    }
    std::fs::create_dir_all(dir.join("docker"))?;
    for f in ["Dockerfile", "kvstore-server"] {
        std::fs::copy(example.join("docker").join(f), dir.join("docker").join(f))?;
    }
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir.join("docker"))
        .output()?;
    if !out.status.success() {
        bail!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn testfleet_run(
    testfleet: &Path,
    dir: &Path,
    manifest: &str,
    filter: &str,
    jobs: usize,
) -> anyhow::Result<f64> {
    suite::timed(
        Command::new(testfleet)
            .args([
                "run",
                "--local",
                "1",
                "--slots",
                &jobs.to_string(),
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .arg("--manifest")
            .arg(dir.join(manifest))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg(filter)
            .env("KV_IMAGE", IMAGE),
        &format!("testfleet run ({manifest}, {filter})"),
    )
}

pub fn run(args: Args) -> anyhow::Result<Vec<Figure>> {
    if !Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("containers: SKIPPED — the Docker engine is unreachable");
        return Ok(vec![]);
    }
    let testfleet = crate::testfleet_path(args.testfleet.clone())?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate is in the workspace")?
        .to_path_buf();
    let work = tempfile::tempdir()?;
    let dir = work.path().join("kvbench");
    write_suite(&dir, args.tests)?;
    build_server(&repo, &dir)?;
    suite::test_binary(&dir)?;
    println!(
        "containers: {} tests that each need a key-value server, {jobs} at a time on one agent",
        args.tests
    );
    // Warm-up: testfleet builds its image once (by content); not counted.
    testfleet_run(&testfleet, &dir, "agent.toml", "svc_0000", jobs)?;
    let agent = testfleet_run(&testfleet, &dir, "agent.toml", "svc_", jobs)?;
    let test = testfleet_run(&testfleet, &dir, "test.toml", "svc_", jobs)?;
    let own = testfleet_run(&testfleet, &dir, "none.toml", "own_", jobs)?;
    let _ = Command::new("docker").args(["rmi", "-f", IMAGE]).output();
    println!(
        "  scope agent {agent:.2} s, scope test {test:.2} s, a container started inside every test {own:.2} s"
    );
    Ok(vec![
        Figure::new(
            "containers",
            "scope agent / scope test",
            agent / test,
            "×",
            Target::None,
        ),
        Figure::new(
            "containers",
            "scope agent / container started in every test",
            agent / own,
            "×",
            Target::None,
        ),
        Figure::new(
            "containers",
            "scope test / container started in every test",
            test / own,
            "×",
            Target::None,
        ),
    ])
}
