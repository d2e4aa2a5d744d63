//! Opening a store written by an earlier version: its schema version, and each migration to the
//! next.

use testfleet_model::Outcome;

use super::super::records::{
    LoggedAttempt, TestLog, TestLogPart, TestSummary, decode, encode_test,
};
use super::super::{HistoryError, verdict};
use super::SledStore;
use super::keys::split_test_key;

/// Schema 1 kept only passing durations per test; schema 2 an attempt log and a summary in two
/// trees; schema 3 keeps both in one value per test (one read and one write per result); schema 4
/// leaves the test's names out of its summary, since its key holds them (values written by 3 still
/// read, and lose their names as they are written again: nothing is rewritten to migrate, and a
/// version that reads only 3 refuses the store instead of showing tests without names).
pub(super) const SCHEMA_VERSION: u32 = 4;
/// Schema 2's tree of attempt logs, folded into `tests` by the migration to 3.
pub(super) const V2_LOG_TREE: &str = "test_log";

impl SledStore {
    pub(super) fn schema_version(&self) -> Result<Option<u32>, HistoryError> {
        self.meta
            .get("schema_version")?
            .map(|v| {
                v.as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| HistoryError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a u32".into(),
                    })
            })
            .transpose()
    }

    pub(super) fn migrate(&self) -> Result<(), HistoryError> {
        let found = match self.schema_version()? {
            // A new store: nothing to migrate.
            None if self.runs.is_empty() && self.tests.is_empty() => SCHEMA_VERSION,
            None => 1,
            Some(v) => v,
        };
        if found > SCHEMA_VERSION {
            return Err(HistoryError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        match found {
            1 => self.migrate_v1()?,
            2 => self.migrate_v2()?,
            _ => {}
        }
        self.meta
            .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        self.db.flush()?;
        if self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == V2_LOG_TREE.as_bytes())
        {
            self.db.drop_tree(V2_LOG_TREE)?;
        }
        Ok(())
    }

    /// Schema 1's `tests` tree held `{recent_passing_ms, runs, last_outcome}`; each passing duration
    /// becomes a logged attempt of unknown revision, and a summary is computed from them.
    fn migrate_v1(&self) -> Result<(), HistoryError> {
        #[derive(serde::Deserialize)]
        struct V1 {
            recent_passing_ms: Vec<u64>,
            runs: u64,
            last_outcome: Option<Outcome>,
        }
        let mut migrated = 0;
        for kv in self.tests.iter() {
            let (key, value) = kv?;
            let old: V1 = decode(&key, &value)?;
            let Some((suite, id)) = split_test_key(&key) else {
                continue;
            };
            let (mut summary, mut log) = (TestSummary::default(), TestLog::default());
            summary.suite = suite;
            summary.binary_id = id.binary_id;
            summary.name = id.name;
            for ms in old.recent_passing_ms {
                let a = LoggedAttempt {
                    run_id: 0,
                    attempt: 1,
                    revision: String::new(),
                    status: testfleet_model::AttemptStatus::Passed,
                    duration_ms: ms,
                    agent_id: String::new(),
                    at_unix_ms: 0,
                };
                verdict::record(&mut summary, &mut log, a);
            }
            summary.runs = old.runs;
            summary.last_outcome = old.last_outcome;
            self.tests
                .insert(&key, encode_test(&summary, TestLogPart::Decoded(&log)))?;
            migrated += 1;
        }
        tracing::info!(tests = migrated, "history migrated from schema 1");
        Ok(())
    }

    /// Schema 2 kept each test's summary in `tests` and its log in `test_log`: they become one
    /// value in `tests`; `test_log` is dropped once the new version is on disk. A crash midway
    /// leaves version 2 and every log in place, and the next open starts over: a value already
    /// joined still reads as its summary (the log behind it is ignored) and is joined again.
    fn migrate_v2(&self) -> Result<(), HistoryError> {
        let logs = self.db.open_tree(V2_LOG_TREE)?;
        let mut migrated = 0;
        let mut batch = sled::Batch::default();
        for kv in self.tests.iter() {
            let (key, value) = kv?;
            let summary: TestSummary = decode(&key, &value)?;
            let log = match logs.get(&key)? {
                Some(b) => decode(&key, &b)?,
                None => TestLog::default(),
            };
            batch.insert(&key, encode_test(&summary, TestLogPart::Decoded(&log)));
            migrated += 1;
            if migrated % 10_000 == 0 {
                self.tests.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.tests.apply_batch(batch)?;
        tracing::info!(tests = migrated, "history migrated from schema 2");
        Ok(())
    }
}
