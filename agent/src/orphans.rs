//! Tests a killed agent left running. Every test process carries `TESTFLEET_AGENT_ID` in its
//! environment (and its children inherit it), so an agent starting under the same identity finds
//! them in `/proc` and kills their process groups before it takes new work.

use std::path::Path;

/// The environment variable every test process of an agent carries.
pub const AGENT_ENV: &str = "TESTFLEET_AGENT_ID";

/// Kills the process groups of processes whose environment names `agent_id`; returns how many
/// processes it found. Processes it may not read (other users') are skipped.
pub fn sweep(agent_id: &str) -> usize {
    sweep_in(Path::new("/proc"), agent_id)
}

fn sweep_in(proc_dir: &Path, agent_id: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return 0;
    };
    let marker = format!("{AGENT_ENV}={agent_id}");
    let me = std::process::id();
    let mut found = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        found += 1;
        // SAFETY: getpgid and kill take plain integers and touch no memory of ours.
        unsafe {
            let pgid = libc::getpgid(pid as i32);
            if pgid > 0 && pgid as u32 != me {
                libc::kill(-pgid, libc::SIGKILL);
            }
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn processes_of_this_agent_are_killed_and_others_are_left_alone() {
        let id = format!("sweep-test-{}", std::process::id());
        let spawn = |agent: &str| {
            std::process::Command::new("sleep")
                .arg("600")
                .env(AGENT_ENV, agent)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut ours = spawn(&id);
        let mut theirs = spawn("some-other-agent");
        assert_eq!(sweep(&id), 1);
        // The kill is synchronous: wait() returns once the kernel has reaped it.
        let status = ours.wait().unwrap();
        assert!(!status.success());
        // The other agent's test is still there.
        assert!(theirs.try_wait().unwrap().is_none());
        theirs.kill().unwrap();
        theirs.wait().unwrap();
    }
}
