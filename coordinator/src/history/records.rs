//! What history stores. Values are postcard (or, for run specs and records written by older
//! versions, JSON) behind a one-byte format tag, so every record says how to read it; the schema
//! version in `meta` says which shapes the trees hold.
//!
//! - `runs`: run id → [`RunRecord`]
//! - `run_tests`: (run id, group) → [`RunEntry`]s, the attempts one group of writes recorded for
//!   a run, folded into a [`TestRecord`] per test when read (stores written before grouping hold
//!   (run id, test index) → [`TestRecord`], which still read)
//! - `tests`: test key → the test's [`TestSummary`] (small, precomputed: what queries read), then
//!   its [`TestLog`] (its last attempts across runs, bounded), in one value so that a result costs
//!   one read and one write (see [`encode_test`]). Schema 2 kept them in two trees, `tests` and
//!   `test_log`.
//! - `quarantine`: test key → [`QuarantineEntry`]
//! - `run_keys`: CI fan-out key → run id (pruned with the run)

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use testfleet_model::{AttemptStatus, Outcome, QuarantinePolicy, RunState, RunSummary};

use super::HistoryError;
use super::stats::Slowdown;

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
    #[serde(default)]
    pub quarantine: QuarantinePolicy,
    /// Times the run was resumed by a restarted coordinator.
    #[serde(default)]
    pub resumes: u32,
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
    #[serde(default)]
    pub quarantined: bool,
}

/// One entry in a run's records: a test skipped, or one attempt of a test (with the test's outcome
/// once this attempt settled it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEntry {
    Skipped {
        index: u32,
        binary_id: String,
        name: String,
        quarantined: bool,
    },
    Attempt {
        index: u32,
        binary_id: String,
        name: String,
        quarantined: bool,
        attempt: AttemptRecord,
        outcome: Option<Outcome>,
    },
}

/// A [`RunEntry`] borrowing what it names from the event it comes from: the same fields in the same
/// order, so postcard writes the same bytes (a unit test compares them), without a copy of every
/// name, message and excerpt held until the group commits.
#[derive(Serialize)]
pub(crate) enum RunEntryRef<'a> {
    Skipped {
        index: u32,
        binary_id: &'a str,
        name: &'a str,
        quarantined: bool,
    },
    Attempt {
        index: u32,
        binary_id: &'a str,
        name: &'a str,
        quarantined: bool,
        attempt: AttemptRecordRef<'a>,
        outcome: Option<Outcome>,
    },
}

/// An [`AttemptRecord`] borrowing its strings; see [`RunEntryRef`].
#[derive(Serialize)]
pub(crate) struct AttemptRecordRef<'a> {
    pub attempt: u32,
    pub agent_id: &'a str,
    pub status: AttemptStatus,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: &'a str,
    pub output_excerpt: &'a str,
}

/// Folds entries, in the order they were written, into per-test records.
pub fn fold_entries(
    records: &mut std::collections::BTreeMap<u32, TestRecord>,
    entries: Vec<RunEntry>,
) {
    for e in entries {
        match e {
            RunEntry::Skipped {
                index,
                binary_id,
                name,
                quarantined,
            } => {
                records.insert(
                    index,
                    TestRecord {
                        index,
                        binary_id,
                        name,
                        attempts: vec![],
                        outcome: Some(Outcome::Skipped),
                        quarantined,
                    },
                );
            }
            RunEntry::Attempt {
                index,
                binary_id,
                name,
                quarantined,
                attempt,
                outcome,
            } => {
                let rec = records.entry(index).or_insert_with(|| TestRecord {
                    index,
                    binary_id,
                    name,
                    attempts: vec![],
                    outcome: None,
                    quarantined,
                });
                rec.attempts.push(attempt);
                rec.outcome = outcome;
            }
        }
    }
}

/// One attempt in a test's log across runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedAttempt {
    pub run_id: u64,
    pub attempt: u32,
    pub revision: String,
    /// Passed, failed or timed out: infrastructure errors never enter a test's log.
    pub status: AttemptStatus,
    pub duration_ms: u64,
    pub agent_id: String,
    pub at_unix_ms: u64,
}

impl LoggedAttempt {
    pub fn failed(&self) -> bool {
        self.status.is_test_failure()
    }
}

/// Counts of attempts that left the log window: history stays bounded, totals stay right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub attempts: u64,
    pub failures: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestLog {
    /// Oldest first, at most [`TestLog::KEEP`].
    pub attempts: VecDeque<LoggedAttempt>,
    pub compacted: Counters,
}

impl TestLog {
    pub const KEEP: usize = 100;

    pub fn push(&mut self, a: LoggedAttempt) {
        push_within_window(
            &mut self.attempts,
            &mut self.compacted,
            a,
            LoggedAttempt::failed,
        );
    }
}

/// Appends `a` to a log's window, folding the oldest attempts past [`TestLog::KEEP`] into its
/// counters: the one rule for a [`TestLog`] and a [`LogView`].
fn push_within_window<T>(
    window: &mut VecDeque<T>,
    compacted: &mut Counters,
    a: T,
    failed: impl Fn(&T) -> bool,
) {
    window.push_back(a);
    while window.len() > TestLog::KEEP {
        let old = window.pop_front().expect("longer than KEEP");
        compacted.attempts += 1;
        compacted.failures += u64::from(failed(&old));
    }
}

/// A [`LoggedAttempt`] whose strings borrow from where it was read: the writer brings a test's
/// log up to date for every result, and reading it this way allocates nothing per attempt. It is
/// stored exactly as a [`LoggedAttempt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView<'a> {
    pub run_id: u64,
    pub attempt: u32,
    pub revision: &'a str,
    pub status: AttemptStatus,
    pub duration_ms: u64,
    pub agent_id: &'a str,
    pub at_unix_ms: u64,
}

impl<'a> AttemptView<'a> {
    pub fn of(a: &'a LoggedAttempt) -> Self {
        AttemptView {
            run_id: a.run_id,
            attempt: a.attempt,
            revision: &a.revision,
            status: a.status,
            duration_ms: a.duration_ms,
            agent_id: &a.agent_id,
            at_unix_ms: a.at_unix_ms,
        }
    }

    pub fn failed(&self) -> bool {
        self.status.is_test_failure()
    }
}

/// A [`TestLog`] read as [`AttemptView`]s; stored exactly as a [`TestLog`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView<'a> {
    #[serde(borrow)]
    pub attempts: VecDeque<AttemptView<'a>>,
    pub compacted: Counters,
}

impl<'a> LogView<'a> {
    pub fn of(log: &'a TestLog) -> Self {
        LogView {
            attempts: log.attempts.iter().map(AttemptView::of).collect(),
            compacted: log.compacted,
        }
    }

    /// Appends an attempt, leaving the oldest out of the window past [`TestLog::KEEP`] (and
    /// counting them).
    pub fn push(&mut self, a: AttemptView<'a>) {
        push_within_window(
            &mut self.attempts,
            &mut self.compacted,
            a,
            AttemptView::failed,
        );
    }
}

/// Evidence that a test is flaky: an attempt on a revision where it both passed and failed.
pub use testfleet_model::report::FlakyEvidence as Evidence;

/// Everything queries need about one test, precomputed when its attempts are recorded. As
/// stored (since schema 4), its names are empty: its key holds them, and they are filled in as
/// it is read for anything but the writer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TestSummary {
    pub suite: String,
    pub binary_id: String,
    pub name: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// All attempts ever recorded, and how many failed (timeouts included).
    pub attempts: u64,
    pub failures: u64,
    /// Runs in which the test settled, and its last outcome.
    pub runs: u64,
    pub last_outcome: Option<Outcome>,
    /// Exponentially decayed rate of outcome flips between consecutive attempts.
    pub flip_rate: f64,
    pub last_failed: Option<bool>,
    /// Revisions in the log window on which the test both passed and failed.
    pub flaky_revisions: u32,
    pub first_flaky_ms: Option<u64>,
    pub last_flaky_ms: Option<u64>,
    /// Attempts on revisions where it passed at least once ("good code"), and failures among them:
    /// the failure probability's inputs. A test that only fails has a bug, not a flake.
    pub good_attempts: u64,
    pub good_failures: u64,
    /// The latest attempts on flaky revisions (most recent last).
    pub evidence: Vec<Evidence>,
    /// Passing durations in the log window.
    pub samples: u32,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub slowdown: Option<Slowdown>,
    /// Attempts left out of the statistics because their lease failed almost as a whole.
    pub excluded: u64,
}

impl TestSummary {
    /// Leaves out the names, which a stored summary's key holds.
    pub fn clear_names(&mut self) {
        for s in [&mut self.suite, &mut self.binary_id, &mut self.name] {
            std::mem::take(s);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub since_ms: u64,
    /// `manual` or `auto`.
    pub by: String,
    pub reason: String,
    /// Clean runs in a row since it entered quarantine.
    pub clean_streak: u32,
}

const FORMAT_JSON_V1: u8 = 1;
const FORMAT_POSTCARD_V1: u8 = 2;

/// Records the writer touches for every result are compact binary (postcard): several times
/// smaller and faster than JSON. Anything written before still reads.
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out =
        postcard::to_extend(v, vec![FORMAT_POSTCARD_V1]).expect("history records always serialize");
    out.shrink_to_fit();
    out
}

/// What [`encode`] makes of a slice of `n` values, from those values already encoded one after
/// another (postcard writes a slice as its length, then its items).
pub(crate) fn encode_encoded_slice(n: usize, items: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() + 6);
    out.push(FORMAT_POSTCARD_V1);
    let mut out = postcard::to_extend(&n, out).expect("a length always serializes");
    out.extend_from_slice(items);
    out
}

/// A test's value in `tests`: the summary first, then the log, each postcard behind one tag.
/// Loading the summary index decodes only the summary ([`decode_test_summary`]); a change that
/// does not touch the log writes its bytes back as they were.
pub(crate) fn encode_test(summary: &TestSummary, log: TestLogPart<'_>) -> Vec<u8> {
    let out = postcard::to_extend(summary, vec![FORMAT_POSTCARD_V1])
        .expect("history records always serialize");
    let mut out = match log {
        TestLogPart::Encoded(bytes) => {
            let mut out = out;
            out.extend_from_slice(bytes);
            out
        }
        TestLogPart::Decoded(log) => {
            postcard::to_extend(log, out).expect("history records always serialize")
        }
        TestLogPart::Viewed(log) => {
            postcard::to_extend(log, out).expect("history records always serialize")
        }
    };
    out.shrink_to_fit();
    out
}

/// A test's log, as it is to be written: the bytes read (unchanged) or a log brought up to date.
pub(crate) enum TestLogPart<'a> {
    Encoded(&'a [u8]),
    Decoded(&'a TestLog),
    Viewed(&'a LogView<'a>),
}

/// Reads the summary at the front of a test's value; returns it with the encoded log behind it.
pub(crate) fn decode_test_summary<'b>(
    key: &[u8],
    bytes: &'b [u8],
) -> Result<(TestSummary, &'b [u8]), HistoryError> {
    match bytes.split_first() {
        Some((&FORMAT_POSTCARD_V1, rest)) => {
            postcard::take_from_bytes(rest).map_err(|e| corrupt(key, e.to_string()))
        }
        Some((v, _)) => Err(corrupt(key, format!("unknown test record format {v}"))),
        None => Err(corrupt(key, "empty record".into())),
    }
}

/// Reads the log part [`decode_test_summary`] left.
pub(crate) fn decode_test_log(key: &[u8], log: &[u8]) -> Result<TestLog, HistoryError> {
    postcard::from_bytes(log).map_err(|e| corrupt(key, e.to_string()))
}

/// Reads the log part [`decode_test_summary`] left, borrowing its strings.
pub(crate) fn view_test_log<'a>(key: &[u8], log: &'a [u8]) -> Result<LogView<'a>, HistoryError> {
    postcard::from_bytes(log).map_err(|e| corrupt(key, e.to_string()))
}

fn corrupt(key: &[u8], reason: String) -> HistoryError {
    HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// For rare, richly shaped records (a run's spec) whose types postcard cannot describe.
pub(crate) fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_JSON_V1];
    serde_json::to_writer(&mut out, v).expect("history records always serialize");
    out
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, HistoryError> {
    match bytes.split_first() {
        Some((&FORMAT_POSTCARD_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(key, e.to_string()))
        }
        Some((&FORMAT_JSON_V1, rest)) => {
            serde_json::from_slice(rest).map_err(|e| corrupt(key, e.to_string()))
        }
        Some((v, _)) => Err(corrupt(key, format!("unknown record format {v}"))),
        None => Err(corrupt(key, "empty record".into())),
    }
}
