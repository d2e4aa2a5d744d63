//! Tests a killed agent left running. Every test process carries `TESTFLEET_AGENT_ID` and
//! `TESTFLEET_AGENT_DIR` (the agent's work dir) in its environment, and its children inherit them,
//! so an agent starting again — same name, same work dir — finds them in `/proc` and kills their
//! process groups before it takes new work. Both must match: another agent of the same name on
//! this machine (another coordinator's, another work dir) keeps its tests.

use std::path::Path;

/// The environment variables every test process of an agent carries: its name and work dir.
pub const AGENT_ENV: &str = "TESTFLEET_AGENT_ID";
pub const AGENT_DIR_ENV: &str = "TESTFLEET_AGENT_DIR";

/// Kills the process groups of processes whose environment names `agent_id` and `work_dir`;
/// returns how many processes it found. Processes it may not read (other users') are skipped.
pub fn sweep(agent_id: &str, work_dir: &Path) -> usize {
    kill_marked(&[
        format!("{AGENT_ENV}={agent_id}"),
        format!("{AGENT_DIR_ENV}={}", work_dir.display()),
    ])
}

/// Kills every process (and its process group) whose environment holds all of `markers`
/// (`NAME=value` entries), this process excepted; returns how many processes it found.
pub fn kill_marked(markers: &[String]) -> usize {
    if markers.is_empty() {
        return 0; // no marker would match every process
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
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
        let has = |m: &String| environ.split(|b| *b == 0).any(|v| v == m.as_bytes());
        if !markers.iter().all(has) {
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
        let (dir, other_dir) = (Path::new("/work/a"), Path::new("/work/b"));
        let spawn = |agent: &str, work_dir: &Path| {
            std::process::Command::new("sleep")
                .arg("600")
                .env(AGENT_ENV, agent)
                .env(AGENT_DIR_ENV, work_dir)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut ours = spawn(&id, dir);
        let mut theirs = spawn("some-other-agent", dir);
        // Same name, another work dir: another agent (of another coordinator, say).
        let mut namesake = spawn(&id, other_dir);
        assert_eq!(sweep(&id, dir), 1);
        // The kill is synchronous: wait() returns once the kernel has reaped it.
        let status = ours.wait().unwrap();
        assert!(!status.success());
        // The other agents' tests are still there.
        for p in [&mut theirs, &mut namesake] {
            assert!(p.try_wait().unwrap().is_none());
            p.kill().unwrap();
            p.wait().unwrap();
        }
    }
}
