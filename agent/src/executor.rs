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
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
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
    let mut child = match command(cmd).spawn() {
        Ok(c) => c,
        Err(e) => {
            return Finished {
                exit: Exit::SpawnFailed(e),
                duration: started.elapsed(),
                output: vec![],
                omitted: 0,
            };
        }
    };
    let pgid = child.id().expect("a just-spawned child has a pid");
    cmd.guard.watch(pgid);
    let capture = Arc::new(Mutex::new(Capture::new(cmd.output_cap)));
    let readers = [
        tokio::spawn(pump(
            child.stdout.take().expect("stdout is piped"),
            capture.clone(),
        )),
        tokio::spawn(pump(
            child.stderr.take().expect("stderr is piped"),
            capture.clone(),
        )),
    ];

    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Exit::Status(s),
            Err(e) => Exit::SpawnFailed(e),
        },
        () = tokio::time::sleep(cmd.timeout) => {
            signal_group(pgid, stop);
            let killed = tokio::time::timeout(cmd.kill_grace, child.wait()).await.is_err();
            Exit::TimedOut { killed }
        },
        () = cancelled(&mut cancel) => Exit::Cancelled,
    };
    let duration = started.elapsed();
    // Whatever is left of the group (the test's own children, or the test after a timeout) goes now.
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait().await;
    cmd.guard.release(pgid);
    for r in readers {
        let _ = tokio::time::timeout(PIPE_DRAIN_LIMIT, r).await;
    }
    let capture = std::mem::replace(&mut *capture.lock().expect("capture lock"), Capture::new(0));
    let (output, omitted) = capture.finish();
    Finished {
        exit,
        duration,
        output,
        omitted,
    }
}

/// Resolves once `cancel` turns true; never if its sender is dropped without doing so.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pump(mut pipe: impl AsyncRead + Unpin, capture: Arc<Mutex<Capture>>) {
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
