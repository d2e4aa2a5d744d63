//! The guard: a small companion process that kills an agent's running tests if the agent dies,
//! even by SIGKILL. The agent tells it each test's process group as the test starts and ends,
//! over the guard's standard input; when the agent dies, the kernel closes that pipe, and the
//! guard kills every group still listed, then exits.
//!
//! A test started just before the agent died may not be listed yet: the agent tells the guard
//! after the spawn returns. So every test also carries the guard's token in its environment
//! (`TESTFLEET_GUARD`), and at the end the guard kills whatever process carries it too. No test
//! can be missed: a spawn in progress holds a copy of the pipe until its exec, and the exec sets
//! the environment the guard looks for.
//!
//! Why not `PR_SET_PDEATHSIG` in each test: setting it needs a hook between fork and exec, and a
//! hook makes the standard library fork the whole multi-threaded agent for every test instead of
//! using posix_spawn; that cost milliseconds per test (see `docs/benchmarks.md`).

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The agent's end: cheap to clone, and a no-op when there is no guard.
#[derive(Clone, Default)]
pub struct Guard {
    pipe: Option<Arc<Mutex<ChildStdin>>>,
    token: Option<Arc<str>>,
}

/// The environment variable that names a test's guard (its token), inherited by its children.
pub const GUARD_ENV: &str = "TESTFLEET_GUARD";

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.pipe.is_some() {
            "Guard(on)"
        } else {
            "Guard(off)"
        })
    }
}

impl Guard {
    /// Starts `program SUBCOMMAND TOKEN` as the guard (it must call [`serve`] with the token).
    /// Its standard input is the only pipe to it, so nothing but the agent's death (or drop)
    /// closes it.
    pub fn start(program: &Path, subcommand: &str) -> std::io::Result<Self> {
        // Unique on this machine: no two live agents share a pid, nor one pid a nanosecond.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let token = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
        let mut child = Command::new(program)
            .args([subcommand, token.as_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        // The guard outlives this handle on purpose; it is reaped by whoever reaps orphans.
        std::mem::forget(child);
        Ok(Guard {
            pipe: Some(Arc::new(Mutex::new(stdin))),
            token: Some(token.into()),
        })
    }

    /// What every test process must carry as [`GUARD_ENV`]; `None` when there is no guard.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn tell(&self, line: String) {
        if let Some(pipe) = &self.pipe {
            let _ = pipe
                .lock()
                .expect("guard pipe lock")
                .write_all(line.as_bytes());
        }
    }

    /// A test's process group started.
    pub fn watch(&self, pgid: u32) {
        self.tell(format!("+{pgid}\n"));
    }

    /// A test's process group is gone.
    pub fn release(&self, pgid: u32) {
        self.tell(format!("-{pgid}\n"));
    }
}

/// For the guard process, before [`serve`]: interrupts and terminations are ignored, because a
/// Ctrl-C in the terminal reaches the agent and its guard alike, and the guard must outlive the
/// agent's clean-up. Only the end of its input ends it.
pub fn ignore_stop_signals() {
    // SAFETY: setting signal dispositions to SIG_IGN involves no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// The guard's side: reads `+PGID` and `-PGID` lines until its input ends, then kills every group
/// still listed and every process whose environment carries `token` as [`GUARD_ENV`]; returns
/// how many groups and processes it found.
pub fn serve(input: impl BufRead, token: Option<&str>) -> usize {
    let mut groups: HashSet<i32> = HashSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        let Ok(pgid) = number.parse::<i32>() else {
            continue;
        };
        match sign {
            "+" if pgid > 1 => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in &groups {
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let marked = token.map_or(0, |token| {
        crate::orphans::kill_marked(&[format!("{GUARD_ENV}={token}")])
    });
    groups.len() + marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn sleeper() -> std::process::Child {
        sleeper_with(&[])
    }

    /// A long sleep in a process group of its own, with `env` added to its environment.
    fn sleeper_with(env: &[(&str, &str)]) -> std::process::Child {
        Command::new("sleep")
            .arg("600")
            .envs(env.iter().copied())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn groups_still_listed_when_the_input_ends_are_killed() {
        let mut listed = sleeper();
        let mut released = sleeper();
        let input = format!(
            "+{}\n+{}\n-{}\ngarbage\n+1\n",
            listed.id(),
            released.id(),
            released.id()
        );
        assert_eq!(serve(input.as_bytes(), None), 1);
        assert!(!listed.wait().unwrap().success());
        assert!(
            released.try_wait().unwrap().is_none(),
            "a released group is left alone"
        );
        released.kill().unwrap();
        released.wait().unwrap();
    }

    #[test]
    fn tests_never_listed_but_carrying_the_token_are_killed() {
        // The agent died between spawning a test and telling the guard of it.
        let token = format!("guard-test-{}", std::process::id());
        let another = format!("{token}-another");
        let mut unlisted = sleeper_with(&[(GUARD_ENV, &token)]);
        let mut anothers = sleeper_with(&[(GUARD_ENV, &another)]);
        assert_eq!(serve(&b""[..], Some(&token)), 1);
        assert!(!unlisted.wait().unwrap().success());
        assert!(
            anothers.try_wait().unwrap().is_none(),
            "another guard's test is left alone"
        );
        anothers.kill().unwrap();
        anothers.wait().unwrap();
    }
}
