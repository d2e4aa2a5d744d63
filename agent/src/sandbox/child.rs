//! A process started in a sandbox, as the agent holds it: its pipes, its exit, and its group's
//! signals (sent through the helper, which knows the process by the namespace's pids).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;

use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::Sandbox;

/// The pipes of a process about to start: the agent's ends, and the ends sent to the helper.
pub(super) struct Pipes {
    out: (OwnedFd, OwnedFd),
    err: (OwnedFd, OwnedFd),
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe()?;
    Ok((r.into(), w.into()))
}

impl Pipes {
    pub fn new() -> std::io::Result<Self> {
        Ok(Pipes {
            out: pipe_pair()?,
            err: pipe_pair()?,
        })
    }

    /// The descriptors the helper gets: stdout's and stderr's write ends.
    pub fn theirs(&self) -> [RawFd; 2] {
        [self.out.1.as_raw_fd(), self.err.1.as_raw_fd()]
    }

    /// The agent's side as a child; the helper's ends are returned to be dropped once sent.
    pub fn split(
        self,
        id: u64,
        sandbox: Arc<Sandbox>,
        exited: oneshot::Receiver<Result<i32, String>>,
    ) -> std::io::Result<(SandboxChild, [OwnedFd; 2])> {
        Ok((
            SandboxChild {
                id,
                sandbox,
                stdout: Some(pipe::Receiver::from_owned_fd(self.out.0)?),
                stderr: Some(pipe::Receiver::from_owned_fd(self.err.0)?),
                exited: Some(exited),
                status: None,
            },
            [self.out.1, self.err.1],
        ))
    }
}

pub struct SandboxChild {
    id: u64,
    sandbox: Arc<Sandbox>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    exited: Option<oneshot::Receiver<Result<i32, String>>>,
    status: Option<ExitStatus>,
}

impl SandboxChild {
    /// Waits for the process to exit; cancel-safe, and returns the same status when called again.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let rx = self.exited.as_mut().expect("waited before its exit");
        let status = match rx.await {
            Ok(Ok(raw)) => ExitStatus::from_raw(raw),
            Ok(Err(reason)) => {
                // It never started: nothing to signal when dropped.
                self.exited = None;
                self.status = Some(ExitStatus::from_raw(127 << 8));
                return Err(std::io::Error::other(reason));
            }
            Err(_) => return Err(std::io::Error::other("the sandbox helper is gone")),
        };
        self.exited = None;
        self.status = Some(status);
        Ok(status)
    }

    /// Signals the process's whole group.
    pub fn signal_group(&self, signal: i32) {
        self.sandbox.signal(self.id, signal);
    }
}

impl Drop for SandboxChild {
    /// As `kill_on_drop`: a test whose runner was dropped does not run on.
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal_group(libc::SIGKILL);
        }
    }
}
