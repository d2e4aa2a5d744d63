//! The sled-backed [`HistoryStore`]. Keys are fixed-width big-endian integers (or `\0`-joined names)
//! so that scans come out ordered; see `docs/design/history.md`.

use std::path::Path;
use std::time::Duration;

use testfleet_model::{EventKind, RunId, TestId};

use super::records::{decode, encode};
use super::{
    AttemptRecord, HistoryError, HistoryStore, HistoryUpdate, RunRecord, TestRecord, TestStats,
};

const SCHEMA_VERSION: u32 = 1;
const OUTPUT_EXCERPT_BYTES: usize = 4096;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    runs: sled::Tree,
    run_tests: sled::Tree,
    tests: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let open_err = |reason: String| HistoryError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir.join("history"))
            .cache_capacity(64 << 20)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    open_err(format!(
                        "{io} (is another testfleet coordinator using this data dir?)"
                    ))
                }
                other => open_err(other.to_string()),
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    HistoryError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a u32".into(),
                    }
                })?);
                if found > SCHEMA_VERSION {
                    return Err(HistoryError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(SledStore {
            meta,
            runs: db.open_tree("runs")?,
            run_tests: db.open_tree("run_tests")?,
            tests: db.open_tree("tests")?,
            db,
        })
    }

    fn update_run(&self, id: RunId, f: impl FnOnce(&mut RunRecord)) -> Result<(), HistoryError> {
        let key = id.0.to_be_bytes();
        if let Some(bytes) = self.runs.get(key)? {
            let mut rec: RunRecord = decode(&key, &bytes)?;
            f(&mut rec);
            self.runs.insert(key, encode(&rec))?;
        }
        Ok(())
    }

    fn update_test_stats(
        &self,
        suite: &str,
        test: &TestId,
        f: impl FnOnce(&mut TestStats),
    ) -> Result<(), HistoryError> {
        let key = test_key(suite, test);
        let mut stats: TestStats = match self.tests.get(&key)? {
            Some(b) => decode(&key, &b)?,
            None => TestStats::default(),
        };
        f(&mut stats);
        self.tests.insert(key, encode(&stats))?;
        Ok(())
    }
}

fn run_test_key(run: RunId, index: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&run.0.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn test_key(suite: &str, t: &TestId) -> Vec<u8> {
    [
        suite.as_bytes(),
        b"\0",
        t.binary_id.as_bytes(),
        b"\0",
        t.name.as_bytes(),
    ]
    .concat()
}

impl HistoryStore for SledStore {
    fn next_run_id(&self) -> Result<RunId, HistoryError> {
        // A dense counter (sled's generate_id skips ahead by a million after every restart).
        let next = self.meta.update_and_fetch("last_run_id", |old| {
            let last = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((last + 1).to_be_bytes().to_vec())
        })?;
        let bytes: [u8; 8] = next
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| HistoryError::Corrupt {
                key: "meta/last_run_id".into(),
                reason: "not a u64".into(),
            })?;
        let id = u64::from_be_bytes(bytes);
        self.meta.flush()?;
        Ok(RunId(id))
    }

    fn apply(&self, update: &HistoryUpdate) -> Result<(), HistoryError> {
        match update {
            HistoryUpdate::RunCreated(rec) => {
                self.runs.insert(rec.run_id.to_be_bytes(), encode(rec))?;
            }
            HistoryUpdate::Event { suite, event } => match &event.kind {
                EventKind::RunStarted { skipped, .. } => {
                    let mut batch = sled::Batch::default();
                    for t in skipped {
                        let rec = TestRecord {
                            index: t.index,
                            binary_id: t.binary_id.clone(),
                            name: t.name.clone(),
                            attempts: vec![],
                            outcome: Some(testfleet_model::Outcome::Skipped),
                        };
                        batch.insert(&run_test_key(event.run_id, t.index), encode(&rec));
                    }
                    self.run_tests.apply_batch(batch)?;
                }
                EventKind::TestFinished {
                    test,
                    attempt,
                    agent_id,
                    result,
                    final_outcome,
                } => {
                    let key = run_test_key(event.run_id, test.index);
                    let mut rec: TestRecord = match self.run_tests.get(key)? {
                        Some(b) => decode(&key, &b)?,
                        None => TestRecord {
                            index: test.index,
                            binary_id: test.binary_id.clone(),
                            name: test.name.clone(),
                            attempts: vec![],
                            outcome: None,
                        },
                    };
                    let excerpt_len = result.output.len().min(OUTPUT_EXCERPT_BYTES);
                    rec.attempts.push(AttemptRecord {
                        attempt: *attempt,
                        agent_id: agent_id.clone(),
                        status: result.status,
                        duration_ms: result.duration.as_millis() as u64,
                        exit_code: result.exit_code,
                        signal: result.signal,
                        message: result.message.clone(),
                        output_excerpt: String::from_utf8_lossy(&result.output[..excerpt_len])
                            .into_owned(),
                    });
                    rec.outcome = *final_outcome;
                    self.run_tests.insert(key, encode(&rec))?;
                    let id = TestId {
                        binary_id: test.binary_id.clone(),
                        name: test.name.clone(),
                    };
                    let passed = result.status == testfleet_model::AttemptStatus::Passed;
                    if passed || final_outcome.is_some() {
                        self.update_test_stats(suite, &id, |s| {
                            if passed {
                                s.push_passing(result.duration.as_millis() as u64);
                            }
                            if let Some(o) = final_outcome {
                                s.runs += 1;
                                s.last_outcome = Some(*o);
                            }
                        })?;
                    }
                }
                EventKind::RunFinished { summary, state } => {
                    self.update_run(event.run_id, |r| {
                        r.state = *state;
                        r.summary = Some(summary.clone());
                    })?;
                    self.db.flush()?;
                }
                EventKind::TestStarted { .. }
                | EventKind::Notice { .. }
                | EventKind::ServiceStarted { .. } => {}
            },
        }
        Ok(())
    }

    fn passing_durations(
        &self,
        suite: &str,
        tests: &[TestId],
    ) -> Result<Vec<Vec<Duration>>, HistoryError> {
        tests
            .iter()
            .map(|t| {
                let key = test_key(suite, t);
                Ok(match self.tests.get(&key)? {
                    Some(b) => decode::<TestStats>(&key, &b)?
                        .recent_passing_ms
                        .into_iter()
                        .map(Duration::from_millis)
                        .collect(),
                    None => vec![],
                })
            })
            .collect()
    }

    fn run(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError> {
        let key = id.0.to_be_bytes();
        self.runs.get(key)?.map(|b| decode(&key, &b)).transpose()
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, HistoryError> {
        self.runs
            .iter()
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn run_tests(&self, id: RunId) -> Result<Vec<TestRecord>, HistoryError> {
        self.run_tests
            .scan_prefix(id.0.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn test_stats(&self, suite: &str, test: &TestId) -> Result<Option<TestStats>, HistoryError> {
        let key = test_key(suite, test);
        self.tests.get(&key)?.map(|b| decode(&key, &b)).transpose()
    }

    fn flush(&self) -> Result<(), HistoryError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_dense_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.next_run_id().unwrap(), RunId(1));
            assert_eq!(s.next_run_id().unwrap(), RunId(2));
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.next_run_id().unwrap(), RunId(3));
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path())
            .err()
            .expect("the data dir is locked");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
