//! A real `testfleet coordinator` process for the benchmarks that measure it from outside: its
//! address from its first line of output, its peak RSS from `/proc`, and a clean stop (SIGTERM,
//! which flushes history) whose wait is part of what is measured.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

pub struct CoordinatorProc {
    child: Child,
    pub url: String,
}

impl CoordinatorProc {
    pub fn start(testfleet: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(testfleet)
            .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the coordinator")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("piped stdout")?).read_line(&mut line)?;
        let Some(addr) = line
            .trim()
            .strip_prefix("testfleet coordinator listening on ")
        else {
            let _ = child.kill();
            bail!("the coordinator did not start: {line:?}");
        };
        let url = format!("http://{addr}");
        Ok(CoordinatorProc { child, url })
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

    /// CPU time the process has used so far (user + system), in seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) start at state; utime and
        // stime are fields 14 and 15 of the line.
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz)
    }

    /// SIGTERM, then waits: the coordinator stops serving and flushes history before it exits.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid touches no memory.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the coordinator exited with {status}");
        }
        Ok(())
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
