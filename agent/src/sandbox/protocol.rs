//! What the agent and its sandbox helper say to each other, one JSON message per packet.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The namespace to make: the first message, before anything else.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Setup {
    /// Trees shown at their origin path, each a writable overlay over a read-only lower layer.
    pub overlays: Vec<Overlay>,
    /// Mounted at `/tmp`: the run's private temporary space on this agent.
    pub tmp: PathBuf,
    /// Paths covered so tests cannot read them: directories by an empty read-only tmpfs, files
    /// by `/dev/null`. Missing paths are skipped.
    pub hide: Vec<PathBuf>,
    /// Also make a user namespace (the agent is not root), mapping the agent's ids to themselves.
    pub user_namespace: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overlay {
    /// The bundle's tree, never written.
    pub lower: PathBuf,
    /// Where the tests' writes go, and the overlay's own work directory (same filesystem).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where tests see it: its path on the submitting machine.
    pub target: PathBuf,
}

/// From the agent, after the setup.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Start a process in its own process group, its stdin `/dev/null`; the message carries its
    /// stdout and stderr as descriptors.
    Spawn {
        id: u64,
        program: PathBuf,
        args: Vec<String>,
        cwd: PathBuf,
        env: Vec<(String, String)>,
    },
    /// Signal a started process's whole group.
    Signal { id: u64, signal: i32 },
}

/// From the helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Ready,
    SetupFailed {
        reason: String,
    },
    SpawnFailed {
        id: u64,
        reason: String,
    },
    /// A started process ended; `status` as `waitpid` gives it.
    Exited {
        id: u64,
        status: i32,
    },
}

/// Largest packet either side sends (a spawn's environment included).
pub const MAX_MESSAGE: usize = 256 * 1024;
