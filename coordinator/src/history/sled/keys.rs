//! The store's keys: a test by suite, binary and name (`\0`-joined, so a suite's tests scan
//! together), and a group of a run's records by run and group id (big-endian, so in order).

use testfleet_model::{RunId, TestId};

/// A group of a run's records: (run id, group id). Stores written before records were grouped
/// hold 12-byte keys, (run id, test index), with one [`TestRecord`] each.
pub(crate) fn run_group_key(run: RunId, group: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&run.0.to_be_bytes());
    k[8..].copy_from_slice(&group.to_be_bytes());
    k
}
pub(super) const UNGROUPED_KEY_LEN: usize = 12;

pub(crate) fn test_key(suite: &str, t: &TestId) -> Vec<u8> {
    [
        suite.as_bytes(),
        b"\0",
        t.binary_id.as_bytes(),
        b"\0",
        t.name.as_bytes(),
    ]
    .concat()
}

pub(super) fn split_test_key(key: &[u8]) -> Option<(String, TestId)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let suite = String::from_utf8_lossy(parts.next()?).into_owned();
    let binary_id = String::from_utf8_lossy(parts.next()?).into_owned();
    let name = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((suite, TestId { binary_id, name }))
}

/// The prefix of a result's output pieces: its run, then its event's seq, both big-endian (a
/// run's outputs are one prefix, pruned with it); each piece adds its number (u32 BE).
pub(super) fn output_key(run: testfleet_model::RunId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&run.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}
