//! Long-lived pytest workers, for a pytest suite's batches (`--tests-per-process` above 1, the
//! default for tool suites): a worker is a pytest session with testfleet's plugin
//! (`testfleet_worker.py`), which runs the node ids it is sent one at a time and says how each
//! ended. The interpreter and the suite's conftest imports are paid once per worker, and a worker
//! stays for the next job of the same command (the next lease of the run), as xdist's workers do.
//!
//! Each test keeps its own timeout; a test that hangs or crashes the worker is the only one blamed
//! (the worker is killed, and the next test gets a new one). A worker that cannot start (no
//! pytest, a plugin that does not load) leaves the job to the JUnit runner, a process per batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testfleet_model::{AttemptResult, AttemptStatus, IdStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::capture::Capture;
use crate::executor::{self, Process, TestCommand};

const PLUGIN: &str = include_str!("testfleet_worker.py");
/// Starts each of the plugin's lines on stdout (after a newline of its own).
const MARK: &str = "\u{1e}testfleet-worker ";
/// An idle worker is stopped when no job has wanted it for this long.
const IDLE: Duration = Duration::from_secs(10);
/// Variables that differ from one test of a worker to the next: sent with each test rather than
/// set when the worker starts.
const PER_TEST_ENV: [&str; 4] = [
    "TESTFLEET_ATTEMPT",
    "TESTFLEET_LEASE_ID",
    "TESTFLEET_RUN_ID",
    "TMPDIR",
];

/// What makes two jobs' workers interchangeable: the same command, environment and sandbox.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Key {
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    /// The run's sandbox by address: a worker's sandboxed process holds its `Arc`, so the
    /// address names one sandbox for as long as the worker lives.
    sandbox: usize,
}

impl Key {
    fn of(cmd: &TestCommand) -> Key {
        let mut env = cmd.env.clone();
        for k in PER_TEST_ENV {
            env.remove(k);
        }
        Key {
            program: cmd.program.clone(),
            args: cmd.args.clone(),
            cwd: cmd.cwd.clone(),
            env,
            sandbox: cmd.sandbox.as_ref().map_or(0, |s| Arc::as_ptr(s) as usize),
        }
    }
}

/// A record the plugin printed.
#[derive(serde::Deserialize, Debug)]
struct Record {
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    duration: f64,
    #[serde(default)]
    output: String,
    #[serde(default)]
    path: String,
}

struct Worker {
    key: Key,
    process: Process,
    commands: pipe::Sender,
    records: mpsc::UnboundedReceiver<Record>,
    /// What the worker printed outside pytest's capture since the current test started.
    own_output: Arc<Mutex<Capture>>,
    /// A test's output cap: what is kept of the worker's own output for the test it is blamed on.
    output_cap: usize,
    /// Why files would not collect, by path.
    collect_errors: BTreeMap<String, String>,
    /// Its FIFO and the plugin's copy; removed with the worker.
    _dir: tempfile::TempDir,
    guard: crate::guard::Guard,
    /// Waited for: its process group id may belong to another group now.
    reaped: bool,
}

impl Drop for Worker {
    /// A worker dropped with the agent's state (the agent stopping) goes with it.
    fn drop(&mut self) {
        if !self.reaped {
            self.process.signal_group(libc::SIGKILL);
        }
    }
}

/// How a test the worker was sent ended, when the worker did not say.
enum Lost {
    TimedOut { killed: bool },
    Exited(std::io::Result<std::process::ExitStatus>),
    Cancelled,
}

/// The agent's idle workers, shared by its jobs.
#[derive(Default)]
pub struct Workers {
    idle: Mutex<Vec<(u64, Worker)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Workers {
    fn take(&self, key: &Key) -> Option<Worker> {
        let mut idle = self.idle.lock().expect("lock");
        let at = idle.iter().position(|(_, w)| w.key == *key)?;
        Some(idle.swap_remove(at).1)
    }

    /// Keeps `w` for the next job of its command, for [`IDLE`] at most.
    fn put_back(self: &Arc<Self>, w: Worker) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.idle.lock().expect("lock").push((id, w));
        let workers = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(IDLE).await;
            let Some(workers) = workers.upgrade() else {
                return;
            };
            let stale = {
                let mut idle = workers.idle.lock().expect("lock");
                idle.iter()
                    .position(|(i, _)| *i == id)
                    .map(|at| idle.swap_remove(at).1)
            };
            if let Some(w) = stale {
                w.stop().await;
            }
        });
    }

    /// Runs `names` (a job's pytest node ids, in order) on a worker; one result per name.
    pub async fn run(
        self: &Arc<Self>,
        cmd: &TestCommand,
        runner_args: &[String],
        names: &[String],
        mut cancel: watch::Receiver<bool>,
    ) -> Vec<AttemptResult> {
        let key = Key::of(cmd);
        let mut worker = self.take(&key);
        let mut results = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if worker.is_none() {
                match Worker::start(cmd, runner_args, key.clone()).await {
                    Ok(w) => worker = Some(w),
                    Err(why) => {
                        tracing::warn!(%why, "pytest worker did not start; running the batch as one pytest process");
                        let rest = crate::runners::junit::run(
                            cmd,
                            runner_args,
                            IdStyle::Pytest,
                            &names[i..],
                            cancel,
                        )
                        .await;
                        results.extend(rest);
                        return results;
                    }
                }
            }
            let w = worker.as_mut().expect("started above");
            match w.test(cmd, name, &mut cancel).await {
                Ok(r) => results.push(r),
                Err(lost) => {
                    let w = worker.take().expect("running a test");
                    let own = w.stop_and_take_output().await;
                    results.push(lost_result(lost, cmd, own));
                    if *cancel.borrow() {
                        let rest = AttemptResult::infra_error("cancelled by the agent");
                        results.extend(std::iter::repeat_n(rest, names.len() - i - 1));
                        return results;
                    }
                }
            }
        }
        if let Some(w) = worker {
            self.put_back(w);
        }
        results
    }
}

fn lost_result(lost: Lost, cmd: &TestCommand, output: (Vec<u8>, u64)) -> AttemptResult {
    use std::os::unix::process::ExitStatusExt;
    let (status, message, exit_code, signal) = match lost {
        Lost::TimedOut { killed } => (
            AttemptStatus::TimedOut,
            format!(
                "timed out after {:.1} s; {}",
                cmd.timeout.as_secs_f64(),
                if killed {
                    "the pytest worker did not stop on SIGINT and was killed"
                } else {
                    "the pytest worker was stopped with SIGINT"
                }
            ),
            None,
            None,
        ),
        Lost::Exited(Ok(s)) => match (s.code(), s.signal()) {
            (Some(code), _) => (
                AttemptStatus::Failed,
                format!("the pytest worker exited with code {code} while running this test"),
                Some(code),
                None,
            ),
            (None, sig) => (
                AttemptStatus::Failed,
                format!(
                    "the pytest worker was killed by signal {} ({}) while running this test",
                    sig.unwrap_or(0),
                    crate::runners::libtest::signal_name(sig.unwrap_or(0))
                ),
                None,
                sig,
            ),
        },
        Lost::Exited(Err(e)) => (
            AttemptStatus::InfraError,
            format!("lost the pytest worker: {e}"),
            None,
            None,
        ),
        Lost::Cancelled => (
            AttemptStatus::InfraError,
            "cancelled by the agent".to_owned(),
            None,
            None,
        ),
    };
    let (output, omitted) = output;
    AttemptResult {
        status,
        duration: Duration::ZERO,
        exit_code,
        signal,
        output,
        output_omitted_bytes: omitted,
        message,
        case: None,
    }
}

/// The worker's command line: the run command's pytest options, without a report or ids, and
/// the plugin.
fn worker_args(runner_args: &[String]) -> Vec<String> {
    let mut args: Vec<String> = runner_args
        .iter()
        .filter(|a| {
            *a != testfleet_model::runner::TESTS && !a.contains(testfleet_model::runner::JUNIT)
        })
        .cloned()
        .collect();
    args.extend(["-p".to_owned(), "testfleet_worker".to_owned()]);
    args
}

impl Worker {
    async fn start(cmd: &TestCommand, runner_args: &[String], key: Key) -> Result<Worker, String> {
        // In a sandbox the FIFO and the plugin live in the run's private /tmp, which the agent
        // reaches under the sandbox's scratch space.
        let (base, seen) = match &cmd.sandbox {
            Some(s) => s.tmp(),
            None => (std::env::temp_dir(), std::env::temp_dir()),
        };
        let dir = tempfile::Builder::new()
            .prefix("testfleet-worker-")
            .tempdir_in(&base)
            .map_err(|e| format!("cannot make the worker's directory: {e}"))?;
        let seen_dir = seen.join(dir.path().strip_prefix(&base).unwrap_or(dir.path()));
        std::fs::write(dir.path().join("testfleet_worker.py"), PLUGIN)
            .map_err(|e| format!("cannot write the worker's plugin: {e}"))?;
        let fifo = dir.path().join("commands");
        make_fifo(&fifo)?;
        // Opened for writing and reading: no wait for the worker to open its end.
        let commands = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&fifo)
            .map_err(|e| format!("cannot open the worker's FIFO: {e}"))?;
        let mut this = cmd.clone();
        this.args = worker_args(runner_args);
        let python_path = match this.env.get("PYTHONPATH") {
            Some(p) if !p.is_empty() => format!("{}:{p}", seen_dir.display()),
            _ => seen_dir.display().to_string(),
        };
        this.env.insert("PYTHONPATH".into(), python_path);
        this.env.insert(
            "TESTFLEET_WORKER_IN".into(),
            seen_dir.join("commands").display().to_string(),
        );
        let started = executor::start(&this)
            .await
            .map_err(|e| format!("failed to start `{}`: {e}", cmd.program.display()))?;
        let own_output = Arc::new(Mutex::new(Capture::new(cmd.output_cap)));
        let (tx, records) = mpsc::unbounded_channel();
        tokio::spawn(read_stdout(started.stdout, tx, own_output.clone()));
        tokio::spawn(read_other(started.stderr, own_output.clone()));
        let mut w = Worker {
            key,
            process: started.process,
            commands,
            records,
            own_output,
            output_cap: cmd.output_cap,
            collect_errors: BTreeMap::new(),
            _dir: dir,
            guard: cmd.guard.clone(),
            reaped: false,
        };
        // Ready once pytest has started and loaded the plugin, within one test's time.
        let ready = tokio::time::timeout(cmd.timeout, async {
            loop {
                tokio::select! {
                    r = w.records.recv() => match r {
                        Some(r) if r.kind == "ready" => return Ok(()),
                        Some(_) => {}
                        None => return Err("it closed its output".to_owned()),
                    },
                    s = w.process.wait() => {
                        w.reaped = true;
                        return Err(format!("it exited ({s:?})"));
                    }
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(w),
            Ok(Err(why)) => {
                let (out, _) = w.stop_and_take_output().await;
                Err(format!("{why}: {}", String::from_utf8_lossy(&out)))
            }
            Err(_) => {
                w.stop().await;
                Err("it did not get ready within the test timeout".to_owned())
            }
        }
    }

    /// Runs one test; `Err` when the worker ended or was stopped before saying how it went.
    async fn test(
        &mut self,
        cmd: &TestCommand,
        name: &str,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<AttemptResult, Lost> {
        let env: BTreeMap<&str, &str> = PER_TEST_ENV
            .iter()
            .filter_map(|k| cmd.env.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        let line = serde_json::json!({ "id": name, "env": env }).to_string() + "\n";
        *self.own_output.lock().expect("lock") = Capture::new(self.output_cap);
        if let Err(e) = self.commands.write_all(line.as_bytes()).await {
            return Err(Lost::Exited(Err(e)));
        }
        let deadline = tokio::time::Instant::now() + cmd.timeout;
        let started = Instant::now();
        loop {
            tokio::select! {
                r = self.records.recv() => match r {
                    Some(r) if r.kind == "collect_error" => {
                        self.collect_errors.insert(r.path, r.message);
                    }
                    Some(r) if r.kind == "result" && r.id == name => {
                        return Ok(self.result(r, cmd, started.elapsed()));
                    }
                    Some(_) => {}
                    None => {
                        let s = self.process.wait().await;
                        self.reaped = true;
                        return Err(Lost::Exited(s));
                    }
                },
                s = self.process.wait() => {
                    self.reaped = true;
                    return Err(Lost::Exited(s));
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.process.signal_group(libc::SIGINT);
                    let stopped = tokio::time::timeout(cmd.kill_grace, self.process.wait()).await;
                    self.reaped = stopped.is_ok();
                    return Err(Lost::TimedOut { killed: stopped.is_err() });
                }
                () = executor::cancelled(cancel) => return Err(Lost::Cancelled),
            }
        }
    }

    fn result(&self, r: Record, cmd: &TestCommand, elapsed: Duration) -> AttemptResult {
        let status = match r.status.as_str() {
            "passed" => AttemptStatus::Passed,
            "skipped" => AttemptStatus::Skipped,
            "failed" => AttemptStatus::Failed,
            _ => AttemptStatus::InfraError,
        };
        let message = match r.status.as_str() {
            "not_found" => {
                let file = r.id.split("::").next().unwrap_or_default();
                match self.collect_errors.get(file) {
                    Some(why) => format!("pytest cannot collect {file}: {why}"),
                    None => "pytest does not find this test".to_owned(),
                }
            }
            _ => r.message,
        };
        let (output, omitted) = Capture::capped(r.output.as_bytes(), cmd.output_cap);
        AttemptResult {
            status,
            // pytest's own measure (setup, call and teardown), else the round trip.
            duration: Duration::try_from_secs_f64(r.duration).unwrap_or(elapsed),
            exit_code: None,
            signal: None,
            output,
            output_omitted_bytes: omitted,
            message,
            case: None,
        }
    }

    /// Ends the worker's process group and waits for it.
    async fn stop(mut self) {
        self.kill().await;
    }

    async fn kill(&mut self) {
        if !self.reaped {
            self.process.signal_group(libc::SIGKILL);
            let _ = self.process.wait().await;
            self.reaped = true;
        }
        self.process.release(&self.guard);
    }

    /// Stops the worker; what it printed of its own since its last test started, capped.
    async fn stop_and_take_output(mut self) -> (Vec<u8>, u64) {
        self.kill().await;
        let fresh = Capture::new(self.output_cap);
        std::mem::replace(&mut *self.own_output.lock().expect("lock"), fresh).finish()
    }
}

fn make_fifo(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "the worker's FIFO path holds a NUL".to_owned())?;
    // SAFETY: mkfifo(3) reads the NUL-terminated path and touches no other memory of ours.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "cannot make the worker's FIFO: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn keep(own: &Mutex<Capture>, bytes: &[u8]) {
    own.lock().expect("lock").push(bytes);
}

/// The plugin's records go to `tx`; anything else the worker prints is its own output.
async fn read_stdout(
    out: Box<dyn AsyncRead + Send + Unpin>,
    tx: mpsc::UnboundedSender<Record>,
    own: Arc<Mutex<Capture>>,
) {
    let mut lines = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        match text.strip_prefix(MARK) {
            Some(json) => match serde_json::from_str::<Record>(json.trim_end()) {
                Ok(r) => {
                    let _ = tx.send(r);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable record from a pytest worker"),
            },
            None => keep(&own, &line),
        }
    }
}

async fn read_other(mut err: Box<dyn AsyncRead + Send + Unpin>, own: Arc<Mutex<Capture>>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = err.read(&mut buf).await {
        if n == 0 {
            return;
        }
        keep(&own, &buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_takes_the_run_command_s_options_but_no_report_or_ids() {
        let args: Vec<String> = [
            "-m",
            "pytest",
            "-q",
            "--junitxml={junit}",
            "-x",
            testfleet_model::runner::TESTS,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            worker_args(&args),
            ["-m", "pytest", "-q", "-x", "-p", "testfleet_worker"]
        );
    }
}
