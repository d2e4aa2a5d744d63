//! The sandbox helper: a small single-threaded process (`testfleet __sandbox`) that makes the
//! namespaces, becomes process 1 of the new PID namespace, and starts each test the agent asks
//! for inside them. Its standard input is its socket to the agent; when the agent goes (or drops
//! the sandbox), the socket closes, the helper exits, and the kernel kills every process left in
//! the namespace.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fdpass;
use super::protocol::{MAX_MESSAGE, Reply, Request, Setup};

const SOCKET: RawFd = 0;

/// The helper's whole life; returns its exit code. Must run before any other thread starts.
pub fn serve() -> i32 {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let setup: Setup = match fdpass::recv(SOCKET, &mut buf) {
        Ok((n, _)) if n > 0 => match serde_json::from_slice(&buf[..n]) {
            Ok(s) => s,
            Err(e) => return failed(&format!("bad setup message: {e}")),
        },
        _ => return 1,
    };
    // SAFETY: plain system calls on this single-threaded process.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    if setup.user_namespace {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare(2) only changes this process's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        return failed(&format!(
            "cannot make namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    if setup.user_namespace
        && let Err(e) = map_ids(uid, gid)
    {
        return failed(&format!("cannot map ids in the user namespace: {e}"));
    }
    // SAFETY: single-threaded, so the child may do anything after fork.
    match unsafe { libc::fork() } {
        -1 => failed(&format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            let code = init(&setup, &mut buf);
            // SAFETY: ends process 1, and with it the namespace.
            unsafe { libc::_exit(code) }
        }
        child => {
            // Only process 1 keeps the socket: its end is the agent's sign that the sandbox is gone.
            // SAFETY: closing our copy of a descriptor we own.
            unsafe { libc::close(SOCKET) };
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            0
        }
    }
}

fn failed(reason: &str) -> i32 {
    reply(&Reply::SetupFailed {
        reason: reason.to_owned(),
    });
    1
}

fn reply(r: &Reply) {
    let bytes = serde_json::to_vec(r).expect("replies serialise");
    // A failed send means the agent is gone; the next receive sees the end and stops.
    let _ = fdpass::send(SOCKET, &bytes, &[]);
}

/// Maps the agent's user and group to themselves, so files keep their owners.
fn map_ids(uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

/// Process 1: mounts, then starts and reaps tests until the agent closes the socket.
fn init(setup: &Setup, buf: &mut [u8]) -> i32 {
    if let Err(reason) = super::mounts::prepare(setup) {
        return failed(&reason);
    }
    let sigchld = match child_signals() {
        Ok(fd) => fd,
        Err(e) => return failed(&format!("cannot watch for child exits: {e}")),
    };
    reply(&Reply::Ready);
    let mut started: HashMap<libc::pid_t, u64> = HashMap::new();
    let mut groups: HashMap<u64, libc::pid_t> = HashMap::new();
    loop {
        let mut polls = [
            libc::pollfd {
                fd: SOCKET,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `polls` is a valid array for the call.
        if unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) } < 0 {
            continue; // EINTR
        }
        if polls[1].revents != 0 {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            // SAFETY: reads one record into a buffer of its size.
            unsafe { libc::read(sigchld.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            reap(&mut started);
        }
        if polls[0].revents != 0 {
            let (n, fds) = match fdpass::recv(SOCKET, buf) {
                Ok((0, _)) | Err(_) => return 0,
                Ok(r) => r,
            };
            match serde_json::from_slice::<Request>(&buf[..n]) {
                Ok(Request::Spawn {
                    id,
                    program,
                    args,
                    cwd,
                    env,
                }) => match spawn(&program, &args, &cwd, &env, fds) {
                    Ok(pid) => {
                        started.insert(pid, id);
                        groups.insert(id, pid);
                    }
                    Err(reason) => reply(&Reply::SpawnFailed { id, reason }),
                },
                Ok(Request::Signal { id, signal }) => {
                    // A group's number is free for reuse once the group is empty: if a newer
                    // test now owns it, the old group is gone and the signal is not for it.
                    if let Some(pid) = groups.get(&id)
                        && started.get(pid).is_none_or(|owner| *owner == id)
                    {
                        // SAFETY: signals a process group of this namespace.
                        unsafe { libc::kill(-pid, signal) };
                    }
                }
                Err(_) => {} // an agent of another version: nothing sensible to do
            }
        }
    }
}

/// Every exited child: the agent hears of its own; orphans that process 1 inherits are reaped.
fn reap(started: &mut HashMap<libc::pid_t, u64>) {
    loop {
        let mut status = 0;
        // SAFETY: reaps any child without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(id) = started.remove(&pid) {
            reply(&Reply::Exited { id, status });
        }
    }
}

/// SIGCHLD as a readable descriptor (blocked, so it queues there instead of interrupting).
fn child_signals() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset manipulation on a local set; signalfd returns a descriptor we then own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Starts a test in its own process group with the given descriptors (stdout, stderr) and
/// `/dev/null` as its stdin; returns its pid once it has exec'd, or why it could not.
fn spawn(
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
    fds: Vec<OwnedFd>,
) -> Result<libc::pid_t, String> {
    if fds.len() != 2 {
        return Err(format!("expected 2 descriptors, got {}", fds.len()));
    }
    let program = resolve(program, env)
        .ok_or_else(|| format!("`{}` is not on the test's PATH", program.display()))?;
    let c = |s: &[u8]| CString::new(s).map_err(|_| "an argument holds a NUL byte".to_owned());
    let path = c(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(Ok(path.clone()))
        .chain(args.iter().map(|a| c(a.as_bytes())))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let dir = c(cwd.as_os_str().as_bytes())?;
    let null = c(b"/dev/null")?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let (out, err) = (fds[0].as_raw_fd(), fds[1].as_raw_fd());
    // posix_spawn, as the agent itself starts tests: glibc clones without copying this process's
    // memory, and reports a failed exec (or chdir) as its result.
    // SAFETY: the actions and attributes are initialised before use and destroyed after; every
    // pointer handed over lives until posix_spawn returns.
    let (spawned, pid) = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawn_file_actions_addopen(&mut actions, 0, null.as_ptr(), libc::O_RDONLY, 0);
        libc::posix_spawn_file_actions_adddup2(&mut actions, out, 1);
        libc::posix_spawn_file_actions_adddup2(&mut actions, err, 2);
        libc::posix_spawn_file_actions_addchdir_np(&mut actions, dir.as_ptr());
        // Its own process group, and none of process 1's blocked signals (SIGCHLD).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::posix_spawnattr_setsigmask(&mut attr, &none);
        libc::posix_spawnattr_setpgroup(&mut attr, 0);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
        );
        let mut pid: libc::pid_t = 0;
        let r = libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions,
            &attr,
            argv_p.as_ptr() as *const *mut libc::c_char,
            envp_p.as_ptr() as *const *mut libc::c_char,
        );
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        (r, pid)
    };
    drop(fds);
    if spawned != 0 {
        let why = std::io::Error::from_raw_os_error(spawned);
        return Err(format!(
            "cannot start `{}` in {}: {why}",
            program.display(),
            cwd.display()
        ));
    }
    Ok(pid)
}

/// A program named without `/` is looked up on the test's own PATH.
fn resolve(program: &Path, env: &[(String, String)]) -> Option<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Some(program.to_path_buf());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())?;
    std::env::split_paths(OsStr::new(path))
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
