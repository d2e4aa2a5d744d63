//! An agent whose work dir fills up, on a small tmpfs of its own: a bundle that does not fit is an
//! infrastructure error that says the disk is full; below `--min-free-bytes` the agent takes no
//! work at all, and once there is room it takes work again by itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use testfleet_model::exit_code;

use crate::fixture;
use crate::support::*;

/// A tmpfs of `mib` MiB mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "none"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Tmpfs(at.to_owned())
    }

    /// Fills it with a ballast file until `leave` bytes are free (written, not sparse: a sparse
    /// file takes no room).
    fn fill_leaving(&self, leave: u64) {
        let free = testfleet_agent::disk_room::free_bytes(&self.0).unwrap();
        let ballast = self.0.join("ballast");
        let now = std::fs::metadata(&ballast).map_or(0, |m| m.len());
        std::fs::write(
            &ballast,
            vec![0u8; (now + free.saturating_sub(leave)) as usize],
        )
        .unwrap();
    }

    fn empty(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_agent_whose_disk_fills_says_so_stops_taking_work_and_recovers_by_itself() {
    // Mounting a tmpfs takes what a mount namespace takes: root.
    if !namespaces_or_skip("an agent on a full disk (a tmpfs for its work dir)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 128);
    let (_coord, url) = coordinator(dir.path());
    let mut cmd = agent_command(&disk.0, &url, "full", 1);
    cmd.args(["--min-free-bytes", "1048576"]);
    let agent = Proc::spawn(cmd, dir.path().join("agent.log"));
    wait_for_agents(&url, 1);

    // Room for the agent, not for the bundle: the download fails, and says why.
    disk.fill_leaving(3 << 20);
    let out = run_remote(&url, &fixture::manifest(), &["adds"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&out)
    );
    let infra = infra_messages(&events(&out));
    assert!(!infra.is_empty());
    for m in &infra {
        assert!(
            m.contains("No space left on device") && m.contains("the agent's disk is full"),
            "{m}"
        );
    }

    // Below the minimum the agent takes no work; the run waits, and goes once there is room.
    disk.fill_leaving(512 << 10);
    wait_until("the agent saying its disk is full", || {
        agent.log().contains("the work dir is nearly full")
    });
    let run = Watched::spawn(
        {
            let mut c = testfleet();
            c.args([
                "run",
                "--coordinator",
                &url,
                "--json",
                "adds",
                "--manifest-path",
            ])
            .arg(fixture::manifest());
            c
        },
        dir.path().join("run.log"),
    );
    // Its work request from before the disk filled is still with the coordinator: the lease it
    // gets goes back. Only then is there room again.
    wait_until("the agent giving back a lease it has no room for", || {
        agent.log().contains("given back")
    });
    disk.empty();
    let out = run.finish();
    all_passed(&out);
    assert!(agent.log().contains("has room again"), "{}", agent.log());
}
