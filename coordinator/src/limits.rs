//! The coordinator's limits: each configurable, each with a default that a large suite never meets,
//! and each named (by its command-line flag) in the error a client or agent gets when it hits one,
//! so the fix is obvious. Hitting a limit refuses that one request; everything else goes on.

use std::fmt::Display;

use tonic::Status;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest gRPC message either way (a run's spec is the largest a client sends).
    pub max_message_bytes: usize,
    pub max_tests_per_run: usize,
    /// Largest output capture a run may ask for, per test attempt; agents' results are cut to it.
    pub max_output_bytes: u64,
    pub max_bundle_bytes: u64,
    /// Runs not yet finished at one time.
    pub max_concurrent_runs: usize,
    /// Agent sessions at one time.
    pub max_agents: usize,
    /// Results (with their output) between agents' sessions and the disk, in bytes: past it,
    /// sessions wait for the history writer, and agents, their results unacknowledged, wait
    /// before asking for more work. It slows the fleet; it refuses nothing.
    pub max_pending_result_bytes: u64,
    /// What runs may hold in memory in all (specs, tests' state, the in-memory part of event
    /// logs): past it, finished runs leave memory early (`WatchRun` then answers from history),
    /// and then new runs are refused until running ones finish.
    pub max_runs_memory_bytes: u64,
    /// How much of each run's event log stays in memory; the rest is written to the data dir and
    /// read back from there.
    pub run_log_memory_bytes: u64,
    /// Free space the data dir keeps: below it, new runs, uploads and imports are refused and the
    /// history writer waits for room (see `data_room.rs`).
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: testfleet_proto::MAX_MESSAGE_BYTES,
            max_tests_per_run: 1_000_000,
            max_output_bytes: 16 << 20,
            max_bundle_bytes: 8 << 30,
            max_concurrent_runs: 256,
            max_agents: 10_000,
            max_pending_result_bytes: crate::history::credits::DEFAULT_PENDING_RESULT_BYTES,
            max_runs_memory_bytes: 1 << 30,
            run_log_memory_bytes: 1 << 20,
            min_free_bytes: crate::data_room::DEFAULT_MIN_FREE_BYTES,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    MessageBytes,
    TestsPerRun,
    OutputBytes,
    BundleBytes,
    ConcurrentRuns,
    Agents,
    RunsMemory,
    DataDirRoom,
}

impl Limit {
    /// The flag that sets it, which is also its name in errors.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::MessageBytes => "--max-message-bytes",
            Limit::TestsPerRun => "--max-tests-per-run",
            Limit::OutputBytes => "--max-output-bytes",
            Limit::BundleBytes => "--max-bundle-bytes",
            Limit::ConcurrentRuns => "--max-concurrent-runs",
            Limit::Agents => "--max-agents",
            Limit::RunsMemory => "--max-runs-memory-bytes",
            Limit::DataDirRoom => "--min-free-bytes",
        }
    }
}

/// The error for a request that hit `limit`.
pub fn exceeded(limit: Limit, detail: impl Display) -> Status {
    Status::resource_exhausted(format!("coordinator limit {} hit: {detail}", limit.flag()))
}
