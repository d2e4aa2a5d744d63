//! Tests of a remote run see their run's bundle at the paths it had on the submitting machine and
//! nothing private of the agent: on Linux each run gets, per agent, a mount and PID namespace made
//! by a small helper process (see [`helper`]), in which the bundle's trees are writable overlays at
//! their origin paths (the cached bundle is never written), `/tmp` is the run's own, the agent's
//! work dir and token file are covered, and `/proc` shows the namespace's processes only.
//!
//! The helper starts every test of the run on this agent, so the namespace is made once per run,
//! not per test: a test costs one message each way and a posix_spawn by the helper. Design notes:
//! `docs/design/sandbox.md`.

mod child;
pub mod fdpass;
mod helper;
mod mounts;
mod per_run;
mod protocol;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

pub use child::SandboxChild;
pub use helper::serve as serve_helper;
pub use per_run::RunSandboxes;
use protocol::{MAX_MESSAGE, Overlay, Reply, Request, Setup};

/// How an agent makes sandboxes: the program to start as the helper, and what to hide from tests.
#[derive(Clone, Debug, Default)]
pub struct Launcher {
    program: Option<PathBuf>,
    subcommand: String,
    hide: Vec<PathBuf>,
    /// Why there are no sandboxes (empty when there are).
    status: String,
}

/// A tree of the bundle to show at its origin path.
#[derive(Clone, Debug)]
pub struct Tree {
    pub bundle_path: PathBuf,
    pub origin: PathBuf,
}

impl Launcher {
    /// No sandboxes, for the reason given (a local fleet, whose tests run in the submitter's own
    /// directories, needs none).
    pub fn off(reason: &str) -> Self {
        Launcher {
            status: reason.to_owned(),
            ..Default::default()
        }
    }

    /// Sandboxes made by `program SUBCOMMAND` (which must call [`serve_helper`]), hiding `hide`
    /// (the agent's work dir, its token file) from tests. Makes one to see that this machine
    /// allows it, in `scratch` (a directory of its own, removed after); if not, the launcher is
    /// off and says why.
    pub async fn probe(
        program: &Path,
        subcommand: &str,
        scratch: &Path,
        hide: Vec<PathBuf>,
    ) -> Self {
        let mut l = Launcher {
            program: Some(program.to_path_buf()),
            subcommand: subcommand.to_owned(),
            hide,
            status: String::new(),
        };
        let dir = scratch.join("probe");
        let tried = async {
            std::fs::create_dir_all(dir.join("tree")).map_err(|e| e.to_string())?;
            // Under the sandbox's own /tmp: made there, nowhere on the agent's filesystem.
            let tree = Tree {
                bundle_path: dir.join("tree"),
                origin: PathBuf::from("/tmp/testfleet-sandbox-probe"),
            };
            let sandbox = l.open(&[tree], &dir.join("sandbox")).await?;
            // The helper's own binary (a FROM-scratch image has no shell), through the namespace's
            // /proc: its path may be out of sight there (under /tmp, say).
            let mut child = sandbox
                .spawn(
                    Path::new("/proc/self/exe"),
                    &["--version".into()],
                    Path::new("/"),
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            match child.wait().await.map(|s| s.code()) {
                Ok(Some(0)) => Ok(()),
                other => Err(format!("a probe process ended with {other:?}")),
            }
        };
        if let Err(e) = tried.await {
            l.status = e;
        }
        // `scratch` is the probe's alone: nothing of it stays.
        remove_scratch(scratch);
        l
    }

    /// Empty when tests run in sandboxes; otherwise why not.
    pub fn status(&self) -> &str {
        &self.status
    }

    pub fn available(&self) -> bool {
        self.status.is_empty() && self.program.is_some()
    }

    /// Makes a sandbox showing `trees` at their origins, its scratch space (writes, `/tmp`) in
    /// `scratch`, which it removes when dropped.
    pub async fn open(&self, trees: &[Tree], scratch: &Path) -> Result<Arc<Sandbox>, String> {
        let program = self.program.as_ref().ok_or("sandboxes are off")?;
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(scratch.join("tmp")).map_err(|e| io("scratch", e))?;
        let mut overlays = vec![];
        for (i, t) in trees.iter().enumerate() {
            let (upper, work) = (
                scratch.join(format!("upper-{i}")),
                scratch.join(format!("work-{i}")),
            );
            for d in [&upper, &work] {
                std::fs::create_dir_all(d).map_err(|e| io("scratch", e))?;
            }
            overlays.push(Overlay {
                lower: t.bundle_path.clone(),
                upper,
                work,
                target: t.origin.clone(),
            });
        }
        let setup = Setup {
            overlays,
            tmp: scratch.join("tmp"),
            hide: self.hide.clone(),
            // SAFETY: geteuid has no preconditions.
            user_namespace: unsafe { libc::geteuid() } != 0,
        };
        let (ours, theirs) = fdpass::socket_pair().map_err(|e| io("socket", e))?;
        let helper = std::process::Command::new(program)
            .arg(&self.subcommand)
            .env_clear()
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| io("cannot start the sandbox helper", e))?;
        let sandbox = Sandbox::start(ours, helper, scratch.to_path_buf())?;
        let bytes = serde_json::to_vec(&setup).expect("setup serialises");
        sandbox
            .send(&bytes, &[])
            .await
            .map_err(|e| io("sandbox helper", e))?;
        let ready = sandbox.ready.lock().expect("ready lock").take();
        match ready.expect("taken once").await {
            Ok(Ok(())) => Ok(Arc::new(sandbox)),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err("the sandbox helper exited during setup".into()),
        }
    }
}

/// Each started process's end: its wait status, or why it could not start.
type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<i32, String>>>>>;

/// One namespace and its helper. Dropping it ends the helper, and with it every process left in
/// the namespace, then removes its scratch space.
pub struct Sandbox {
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Waiters,
    ready: Mutex<Option<oneshot::Receiver<Result<(), String>>>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    helper: Mutex<Option<std::process::Child>>,
    scratch: PathBuf,
}

impl Sandbox {
    fn start(sock: OwnedFd, helper: std::process::Child, scratch: PathBuf) -> Result<Self, String> {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(sock.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: an OwnedFd keeps the same open descriptor until the AsyncFd drops it.
        let sock = unsafe { AsyncFd::register(sock) }
            .map_err(|e| format!("sandbox socket: {}", std::io::Error::from(e)))?;
        let sock = Arc::new(sock);
        let waiters: Waiters = Default::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let reader = tokio::spawn(read_replies(sock.clone(), waiters.clone(), ready_tx));
        Ok(Sandbox {
            sock,
            waiters,
            ready: Mutex::new(Some(ready_rx)),
            next_id: AtomicU64::new(1),
            reader,
            helper: Mutex::new(Some(helper)),
            scratch,
        })
    }

    /// The run's private temporary directory on this agent: where the agent writes it, and where
    /// its tests see it.
    pub fn tmp(&self) -> (PathBuf, PathBuf) {
        (self.scratch.join("tmp"), PathBuf::from("/tmp"))
    }

    async fn send(&self, data: &[u8], fds: &[std::os::fd::RawFd]) -> std::io::Result<()> {
        loop {
            let mut guard = self.sock.writable().await?;
            match guard.try_io(|s| fdpass::send(s.as_raw_fd(), data, fds)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Starts a process in the namespace, in its own process group, its output piped back.
    pub async fn spawn(
        self: &Arc<Self>,
        program: &Path,
        args: &[String],
        cwd: &Path,
        env: &[(String, String)],
    ) -> std::io::Result<SandboxChild> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pipes = child::Pipes::new()?;
        let (exited_tx, exited_rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(id, exited_tx);
        let request = Request::Spawn {
            id,
            program: program.to_path_buf(),
            args: args.to_vec(),
            cwd: cwd.to_path_buf(),
            env: env.to_vec(),
        };
        let bytes = serde_json::to_vec(&request).expect("requests serialise");
        if bytes.len() > MAX_MESSAGE {
            return Err(std::io::Error::other(
                "the test's command and environment are too large",
            ));
        }
        let sent = self.send(&bytes, &pipes.theirs()).await;
        let (child, theirs) = pipes.split(id, self.clone(), exited_rx)?;
        // The helper has its copies: ours would keep the test's output open after it exits.
        drop(theirs);
        sent?;
        // Not waiting for the helper to say it started: a test that could not start ends at
        // once with why (its `wait`), and a started one saves a round trip.
        Ok(child)
    }

    /// Signals a started process's group; a no-op once the helper is gone.
    pub(crate) fn signal(&self, id: u64, signal: i32) {
        let bytes = serde_json::to_vec(&Request::Signal { id, signal }).expect("serialises");
        // Not awaited: a full socket means a helper that no longer reads, and dropping the
        // sandbox kills everything anyway.
        let _ = fdpass::send(self.sock.get_ref().as_raw_fd(), &bytes, &[]);
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sandbox({})", self.scratch.display())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.reader.abort();
        let helper = self.helper.lock().expect("helper lock").take();
        let scratch = self.scratch.clone();
        // The socket closes with `self`: process 1 sees the end and exits, taking the namespace
        // with it. Waiting for that and removing the scratch space may take a moment: not here.
        std::thread::spawn(move || {
            if let Some(mut h) = helper {
                let _ = h.wait();
            }
            remove_scratch(&scratch);
        });
    }
}

/// Removes a sandbox's scratch space; overlay work dirs may be left unreadable by the kernel.
pub(crate) fn remove_scratch(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
    open_up(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a sandbox's scratch space");
    }
}

async fn read_replies(
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Waiters,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok(mut guard) = sock.readable().await else {
            break;
        };
        let n = match guard.try_io(|s| fdpass::recv(s.as_raw_fd(), &mut buf)) {
            Ok(Ok((0, _)) | Err(_)) => break,
            Ok(Ok((n, _))) => n,
            Err(_would_block) => continue,
        };
        let Ok(reply) = serde_json::from_slice::<Reply>(&buf[..n]) else {
            continue;
        };
        let mut w = waiters.lock().expect("waiters lock");
        match reply {
            Reply::Ready => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Reply::SetupFailed { reason } => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(reason));
                }
            }
            Reply::SpawnFailed { id, reason } => {
                if let Some(tx) = w.remove(&id) {
                    let _ = tx.send(Err(reason));
                }
            }
            Reply::Exited { id, status } => {
                if let Some(tx) = w.remove(&id) {
                    let _ = tx.send(Ok(status));
                }
            }
        }
    }
    // The helper is gone: every process waiting on it hears so (their senders drop).
    waiters.lock().expect("waiters lock").clear();
}
