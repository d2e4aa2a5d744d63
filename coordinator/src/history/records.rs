//! What history stores: one record per run, one per (run, test), and rolling stats per test.
//! Values are JSON behind a one-byte format version, so a later schema can still read them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use testfleet_model::{AttemptStatus, Outcome, RunState, RunSummary};

use super::HistoryError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: u64,
    pub suite: String,
    pub total_tests: u32,
    pub revision: String,
    pub branch: String,
    pub created_unix_ms: u64,
    pub state: RunState,
    pub summary: Option<RunSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub agent_id: String,
    pub status: AttemptStatus,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    /// The start of the captured output; the whole of it went to the live event stream.
    pub output_excerpt: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRecord {
    pub index: u32,
    pub binary_id: String,
    pub name: String,
    pub attempts: Vec<AttemptRecord>,
    pub outcome: Option<Outcome>,
}

/// Rolling per-test stats across runs, for estimates (and later, flakiness).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestStats {
    /// Most recent last, at most [`TestStats::KEEP`].
    pub recent_passing_ms: Vec<u64>,
    pub runs: u64,
    pub last_outcome: Option<Outcome>,
}

impl TestStats {
    pub const KEEP: usize = 100;

    pub fn push_passing(&mut self, ms: u64) {
        self.recent_passing_ms.push(ms);
        let excess = self.recent_passing_ms.len().saturating_sub(Self::KEEP);
        self.recent_passing_ms.drain(..excess);
    }
}

const FORMAT_JSON_V1: u8 = 1;

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_JSON_V1];
    serde_json::to_writer(&mut out, v).expect("history records always serialize");
    out
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, HistoryError> {
    let corrupt = |reason: String| HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT_JSON_V1, rest)) => {
            serde_json::from_slice(rest).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown record format {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}
