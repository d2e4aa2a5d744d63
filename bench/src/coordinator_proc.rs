//! A real `testfleet coordinator` process for the benchmarks that measure it from outside: its
//! address from its first line of output, its peak RSS from `/proc`, and a clean stop (SIGTERM,
//! which flushes history) whose wait is part of what is measured. Its log goes to a file next to
//! its data dir (a thousand agents connecting would bury the figures), and its end is quoted in
//! any error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

pub struct CoordinatorProc {
    child: Child,
    pub url: String,
    log: PathBuf,
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!("{}:\n{}", log.display(), lines[start..].join("\n"))
}

impl CoordinatorProc {
    pub fn start(testfleet: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let log = data_dir.with_extension("log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(testfleet)
            .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("starting the coordinator")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("piped stdout")?).read_line(&mut line)?;
        let Some(addr) = line
            .trim()
            .strip_prefix("testfleet coordinator listening on ")
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the coordinator did not start: {line:?}; {}", tail(&log));
        };
        let url = format!("http://{addr}");
        Ok(CoordinatorProc { child, url, log })
    }

    /// The most memory the process has held (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc/PID/status")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb / 1024.0)
    }

    /// SIGTERM, then waits: the coordinator stops serving and flushes history before it exits.
    /// Returns the CPU time it used in all (user + system, in seconds).
    pub fn stop(self) -> anyhow::Result<f64> {
        let pid = self.child.id() as i32;
        let log = self.log.clone();
        // The child is reaped here, by wait4 (which also reports its resource use).
        std::mem::forget(self);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: kill and wait4 on our own child's pid, with pointers to locals.
        let reaped = unsafe {
            libc::kill(pid, libc::SIGTERM);
            libc::wait4(pid, &mut status, 0, &mut usage)
        };
        if reaped != pid {
            bail!(
                "waiting for the coordinator failed: {}",
                std::io::Error::last_os_error()
            );
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!(
                "the coordinator exited with status {status:#x}; {}",
                tail(&log)
            );
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(secs(usage.ru_utime) + secs(usage.ru_stime))
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
