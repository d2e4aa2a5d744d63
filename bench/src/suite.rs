//! Generated Rust suites: a crate written into a temporary dir, built once, and its test binary
//! found, so every contender runs the very same binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `cargo`, as the bench was started (under `cargo run`) or from `PATH`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Writes a library crate named `name` whose `src/lib.rs` is `lib_rs`.
pub fn write_crate(dir: &Path, name: &str, lib_rs: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), lib_rs)?;
    Ok(())
}

/// Builds the crate's tests (dev profile, as `cargo test` does) and returns the test binary.
pub fn test_binary(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "test",
            "--no-run",
            "--message-format",
            "json",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "building {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(exe) = v.get("executable").and_then(|e| e.as_str()) {
            return Ok(exe.into());
        }
    }
    bail!("cargo built no test binary for {}", dir.display())
}

/// Whether `cargo nextest` is installed.
pub fn have_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `cmd` to its end, its output discarded, and returns its wall time in seconds; a failure
/// is an error quoting its stderr, `what` saying which command it was.
pub fn timed(cmd: &mut Command, what: &str) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let out = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}
