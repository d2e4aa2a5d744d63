//! What a run holds in memory, as `--max-runs-memory-bytes` counts it.

use testfleet_model::RunSpec;

use super::Run;
use super::test_state::TestState;

/// What a spec takes in memory, roughly: its tests and their names, and its binaries. A name
/// shared with another run of the suite (`api/shared_names.rs`) is counted in full in each: the
/// budget errs on the safe side.
pub(super) fn spec_bytes(spec: &RunSpec) -> usize {
    let tests: usize = spec
        .tests
        .iter()
        .map(|t| {
            std::mem::size_of::<testfleet_model::TestSpec>()
                + t.name.len()
                + t.group().map_or(0, str::len)
                + t.shares().map_or(0, str::len)
        })
        .sum();
    let binaries: usize = spec
        .binaries
        .iter()
        .map(|b| std::mem::size_of_val(b) + b.binary_id.len() + b.path.len())
        .sum();
    tests + binaries
}

impl Run {
    /// What a run of `spec` holds in memory before its log grows.
    pub fn footprint_of(spec: &RunSpec) -> usize {
        spec_bytes(spec)
            + spec.tests.len() * (std::mem::size_of::<TestState>() + std::mem::size_of::<u32>())
    }

    /// What the run holds in memory, roughly: its spec, its tests' state and queue, and the part of
    /// its log not on disk.
    pub fn memory_bytes(&self) -> usize {
        self.spec_bytes
            + self.tests.capacity() * std::mem::size_of::<TestState>()
            + self.queue.capacity() * std::mem::size_of::<u32>()
            + self.log.memory_bytes()
    }
}
