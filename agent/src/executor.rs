//! Runs one test process: its own process group, captured output, and a timeout that terminates
//! the whole group (SIGTERM or the runner's stop signal, a grace period, then SIGKILL).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::capture::Capture;

/// Everything needed to start one test process.
#[derive(Clone, Debug)]
pub struct TestCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub output_cap: usize,
    /// Told of the test's process group, so the group dies with the agent.
    pub guard: crate::guard::Guard,
    /// The run's namespace on this agent, which starts the process when there is one.
    pub sandbox: Option<Arc<crate::sandbox::Sandbox>>,
    /// After the test exits, how long processes it started may hold its output open before they
    /// are killed and the test is said to leak; `None` kills them at once and says nothing.
    pub leak_timeout: Option<Duration>,
}

/// A started test process, wherever it runs.
pub(crate) enum Process {
    /// A child of the agent, its process group id being its pid.
    Local {
        child: tokio::process::Child,
        pgid: u32,
    },
    /// Started by the run's sandbox helper.
    Sandboxed(crate::sandbox::SandboxChild),
}

/// A started process and its output pipes.
pub(crate) struct Started {
    pub process: Process,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
}

impl Process {
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Process::Local { child, .. } => child.wait().await,
            Process::Sandboxed(c) => c.wait().await,
        }
    }

    /// Signals the process's whole group.
    pub fn signal_group(&self, signal: i32) {
        match self {
            Process::Local { pgid, .. } => signal_group(*pgid, signal),
            Process::Sandboxed(c) => c.signal_group(signal),
        }
    }

    /// The guard no longer needs to kill its group (a sandboxed group dies with its helper).
    pub fn release(&self, guard: &crate::guard::Guard) {
        if let Process::Local { pgid, .. } = self {
            guard.release(*pgid);
        }
    }
}

/// Starts `cmd`: in its run's sandbox when it has one, else as a child of the agent in a process
/// group of its own (told to the guard).
pub(crate) async fn start(cmd: &TestCommand) -> std::io::Result<Started> {
    if let Some(sandbox) = &cmd.sandbox {
        let mut env: Vec<(String, String)> = cmd.env.clone().into_iter().collect();
        if let Some(token) = cmd.guard.token() {
            env.push((crate::guard::GUARD_ENV.into(), token.to_owned()));
        }
        let mut c = sandbox
            .spawn(&cmd.program, &cmd.args, &cmd.cwd, &env)
            .await?;
        let stdout = Box::new(c.stdout.take().expect("stdout is piped"));
        let stderr = Box::new(c.stderr.take().expect("stderr is piped"));
        return Ok(Started {
            process: Process::Sandboxed(c),
            stdout,
            stderr,
        });
    }
    let mut child = command(cmd).spawn()?;
    let pgid = child.id().expect("a just-spawned child has a pid");
    cmd.guard.watch(pgid);
    let stdout = Box::new(child.stdout.take().expect("stdout is piped"));
    let stderr = Box::new(child.stderr.take().expect("stderr is piped"));
    Ok(Started {
        process: Process::Local { child, pgid },
        stdout,
        stderr,
    })
}

/// How the process ended, before a runner interprets it.
#[derive(Debug)]
pub enum Exit {
    Status(ExitStatus),
    TimedOut { killed: bool },
    Cancelled,
    SpawnFailed(std::io::Error),
}

#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub duration: Duration,
    pub output: Vec<u8>,
    pub omitted: u64,
    /// Processes the test started still held its output open a leak timeout after it exited.
    pub leaked: bool,
}

/// How long to wait for output pipes after the process group is gone. Only a process that escaped
/// the group (a double fork into a new session) can keep them open this long.
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub(crate) fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory of ours.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// The command for a test process: its own process group, output piped, killed if dropped.
pub(crate) fn command(cmd: &TestCommand) -> Command {
    let mut command = Command::new(&cmd.program);
    // No `pre_exec` hook: without one the standard library starts the process with posix_spawn
    // (vfork semantics), which costs the same however much memory the agent holds; a fork of a
    // local fleet's process cost milliseconds per test. Tests an agent leaves behind when it is
    // killed die with it by the guard (`guard`), or are swept when it starts again (`orphans`).
    // The environment is exactly the one the agent chose (`job::test_env`), never all of its own.
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(token) = cmd.guard.token() {
        command.env(crate::guard::GUARD_ENV, token);
    }
    command
}

/// Runs the command to its end, its timeout, or `cancel` turning true.
pub async fn run(cmd: &TestCommand, cancel: watch::Receiver<bool>) -> Finished {
    run_stopping_with(cmd, cancel, libc::SIGTERM).await
}

/// [`run`], asking the process group to stop at the timeout with `stop` (SIGINT lets tools that
/// treat it as Ctrl-C, like pytest, still write their report) before the grace period's SIGKILL.
pub async fn run_stopping_with(
    cmd: &TestCommand,
    mut cancel: watch::Receiver<bool>,
    stop: i32,
) -> Finished {
    let started = Instant::now();
    let Started {
        mut process,
        stdout,
        stderr,
    } = match start(cmd).await {
        Ok(s) => s,
        Err(e) => {
            return Finished {
                exit: Exit::SpawnFailed(e),
                duration: started.elapsed(),
                output: vec![],
                omitted: 0,
                leaked: false,
            };
        }
    };
    let capture = Arc::new(Mutex::new(Capture::new(cmd.output_cap)));
    let mut readers = [
        tokio::spawn(pump(stdout, capture.clone())),
        tokio::spawn(pump(stderr, capture.clone())),
    ];

    let exit = tokio::select! {
        status = process.wait() => match status {
            Ok(s) => Exit::Status(s),
            Err(e) => Exit::SpawnFailed(e),
        },
        () = tokio::time::sleep(cmd.timeout) => {
            process.signal_group(stop);
            let killed = tokio::time::timeout(cmd.kill_grace, process.wait()).await.is_err();
            Exit::TimedOut { killed }
        },
        () = cancelled(&mut cancel) => Exit::Cancelled,
    };
    let duration = started.elapsed();
    // A test that exited may have left processes that hold its output open: with a leak timeout
    // they get that long to close it (nextest's leaky tests), and then go like the rest.
    let mut leaked = false;
    if let (Exit::Status(_), Some(wait)) = (&exit, cmd.leak_timeout) {
        let closed = async {
            for r in &mut readers {
                let _ = r.await;
            }
        };
        leaked = tokio::time::timeout(wait, closed).await.is_err();
    }
    // Whatever is left of the group (the test's own children, or the test after a timeout) goes now.
    process.signal_group(libc::SIGKILL);
    let _ = process.wait().await;
    process.release(&cmd.guard);
    for r in readers {
        if !r.is_finished() {
            let _ = tokio::time::timeout(PIPE_DRAIN_LIMIT, r).await;
        }
    }
    let capture = std::mem::replace(&mut *capture.lock().expect("capture lock"), Capture::new(0));
    let (output, omitted) = capture.finish();
    Finished {
        exit,
        duration,
        output,
        omitted,
        leaked,
    }
}

/// Resolves once `cancel` turns true; never if its sender is dropped without doing so.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pump(mut pipe: Box<dyn AsyncRead + Send + Unpin>, capture: Arc<Mutex<Capture>>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        capture.lock().expect("capture lock").push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn sh(script: &str, timeout: Duration) -> TestCommand {
        TestCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: BTreeMap::new(),
            timeout,
            kill_grace: Duration::from_millis(200),
            output_cap: 1024,
            guard: Default::default(),
            sandbox: None,
            leak_timeout: None,
        }
    }

    fn never() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    #[tokio::test]
    async fn exit_status_and_interleaved_output_are_captured() {
        let f = run(
            &sh("echo out; echo err >&2; exit 3", Duration::from_secs(60)),
            never(),
        )
        .await;
        assert!(matches!(f.exit, Exit::Status(s) if s.code() == Some(3)));
        let out = String::from_utf8(f.output).unwrap();
        assert!(out.contains("out\n") && out.contains("err\n"), "{out}");
    }

    #[tokio::test]
    async fn a_hanging_process_group_is_killed_at_the_timeout_with_its_output_so_far() {
        // The child ignores SIGTERM, and a grandchild holds the pipes: both must go.
        let script = "trap '' TERM; echo before-hang; sleep 1000 & sleep 1000; echo never";
        let f = run(&sh(script, Duration::from_millis(300)), never()).await;
        assert!(
            matches!(f.exit, Exit::TimedOut { killed: true }),
            "{:?}",
            f.exit
        );
        let out = String::from_utf8(f.output).unwrap();
        assert!(
            out.contains("before-hang") && !out.contains("never"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_child_holding_the_output_past_the_leak_timeout_is_a_leak_and_is_killed() {
        // The test exits at once; its child keeps the pipes open for 1000 s.
        let mut cmd = sh("sleep 1000 & echo parent-done", Duration::from_secs(60));
        cmd.leak_timeout = Some(Duration::from_millis(100));
        let f = run(&cmd, never()).await;
        assert!(
            matches!(f.exit, Exit::Status(s) if s.success()),
            "{:?}",
            f.exit
        );
        assert!(f.leaked);
        assert!(String::from_utf8(f.output).unwrap().contains("parent-done"));
        // A child that closes its output (here: ends) well within the timeout is no leak.
        let mut cmd = sh("(sleep 0.05) & echo done", Duration::from_secs(60));
        cmd.leak_timeout = Some(Duration::from_secs(30));
        let f = run(&cmd, never()).await;
        assert!(!f.leaked);
    }

    #[tokio::test]
    async fn a_signal_death_is_reported_as_such() {
        let f = run(&sh("kill -ABRT $$", Duration::from_secs(60)), never()).await;
        assert!(
            matches!(f.exit, Exit::Status(s) if s.signal() == Some(libc::SIGABRT)),
            "{:?}",
            f.exit
        );
    }

    #[tokio::test]
    async fn cancellation_stops_the_test() {
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            run(
                &sh("echo started; sleep 1000", Duration::from_secs(600)),
                rx,
            )
            .await
        });
        tx.send(true).unwrap();
        let f = handle.await.unwrap();
        assert!(matches!(f.exit, Exit::Cancelled), "{:?}", f.exit);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_failure() {
        let mut cmd = sh("", Duration::from_secs(1));
        cmd.program = "/nonexistent/testfleet-binary".into();
        assert!(matches!(
            run(&cmd, never()).await.exit,
            Exit::SpawnFailed(_)
        ));
    }
}
