//! Disks that fill, on small tmpfs mounts. An agent's work dir: a bundle that does not fit is an
//! infrastructure error that says the disk is full; below `--min-free-bytes` the agent takes no
//! work at all, and once there is room it takes work again by itself. A coordinator's data dir:
//! below its `--min-free-bytes` new runs are refused and history waits, holding its results, so
//! nothing acknowledged is lost; once there is room the runs finish, every result in history once.

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

    fn free(&self) -> u64 {
        testfleet_bundle::room::free_bytes(&self.0).unwrap()
    }

    /// Fills it with a ballast file until `leave` bytes are free (written, not sparse: a sparse
    /// file takes no room).
    fn fill_leaving(&self, leave: u64) {
        let free = self.free();
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
    // The agent may still be removing what the failed downloads left, which frees room again
    // after the ballast was sized: filled again while it has more than a quarter MiB to spare.
    disk.fill_leaving(512 << 10);
    wait_until_or_show(
        "the agent saying its disk is full",
        || {
            if disk.free() > 768 << 10 {
                disk.fill_leaving(512 << 10);
            }
            agent.log().contains("the work dir is nearly full")
        },
        || agent.log(),
    );
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

/// The fixture suite on the coordinator at `url`, watched in the background.
fn fixture_run(url: &str, log: PathBuf) -> Watched {
    let cmd = RunLine::on(url)
        .retries(1)
        .timeout(5, 1)
        .json()
        .manifest(&fixture::manifest())
        .command();
    Watched::spawn(cmd, log)
}

#[test]
fn a_coordinator_whose_data_dir_fills_refuses_runs_holds_results_and_loses_none() {
    if !namespaces_or_skip("a coordinator on a full disk (a tmpfs for its data dir)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The data dir `coordinator` starts the coordinator on.
    let disk = Tmpfs::mount(&dir.path().join("coordinator"), 256);
    let limits = [
        "--min-free-bytes",
        "16777216",
        // A small budget of results between agents and the disk: the writer holding its
        // results stops the sessions early.
        "--max-output-bytes",
        "65536",
        "--max-pending-result-bytes",
        "131072",
    ];
    let (mut coord, addr) = coordinator_with(dir.path(), "127.0.0.1:0", "coordinator.log", &limits);
    let url = format!("http://{addr}");

    // Runs accepted while there is room, before any agent can run them.
    // One at a time: the first builds the suite.
    let runs: Vec<Watched> = (1..=3)
        .map(|i| {
            let run = fixture_run(&url, dir.path().join(format!("run-{i}.log")));
            wait_until("the run submitted", || {
                coord.log().matches("run submitted").count() == i
            });
            run
        })
        .collect();

    // The disk fills (far less than a run's results writes free): a new run is refused, saying
    // why; the runs accepted go on, their results held by the history writer.
    disk.fill_leaving(256 << 10);
    let refused = run_remote(&url, &fixture::manifest(), &[]);
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(
        said.contains("--min-free-bytes") && said.contains("new runs are refused"),
        "{said}"
    );
    let agent = Proc::spawn(
        agent_command(dir.path(), &url, "disk-full", 2),
        dir.path().join("agent.log"),
    );
    wait_until("history waiting for room", || {
        coord
            .log()
            .contains("history waits for room on the data dir")
    });

    // Room again: everything held is written, the runs end as the fixture does.
    disk.empty();
    let ids: Vec<_> = runs
        .into_iter()
        .map(|run| {
            let out = run.finish();
            assert_eq!(
                out.status.code(),
                Some(exit_code::TESTS_FAILED),
                "{}",
                stderr(&out)
            );
            run_id_of(&out)
        })
        .collect();
    assert!(coord.log().contains("history has room again"));
    assert!(
        !coord.log().contains("history cannot be written"),
        "{}",
        coord.log()
    );

    // It stops and opens cleanly, with every result of every run in history exactly once.
    assert!(coord.stop().success(), "{}", coord.log());
    for id in &ids {
        assert_history_exact(&disk.0, *id);
    }
    let (_coord, _) = coordinator_with(dir.path(), &addr, "coordinator-2.log", &limits);
    wait_for_agents(&url, 1);
    let next = fixture_run(&url, dir.path().join("run-next.log")).finish();
    assert_eq!(
        next.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(&next)
    );
    drop(agent);
}
