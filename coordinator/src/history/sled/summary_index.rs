//! Every test's summary, in memory once a query first asks: queries read it, plans too once it is
//! loaded (else sled), and the writer brings it up to date as it commits.

use std::collections::BTreeMap;

use testfleet_model::TestId;

use super::super::HistoryError;
use super::super::records::{TestSummary, decode_test_summary};
use super::SledStore;
use super::keys::{split_test_key, test_key};
use super::many_keys::get_many;

pub(crate) type SummaryIndex = BTreeMap<Vec<u8>, TestSummary>;

/// The tests a group wrote, by key, each with its summary if the index was loaded when the group
/// began (see [`SledStore::summaries_written`]).
pub(crate) type Written = Vec<(Vec<u8>, Option<TestSummary>)>;

/// The summary of a test history has not seen yet.
pub(crate) fn new_summary(suite: &str, id: &TestId) -> TestSummary {
    TestSummary {
        suite: suite.to_owned(),
        binary_id: id.binary_id.clone(),
        name: id.name.clone(),
        ..TestSummary::default()
    }
}

impl SledStore {
    pub(crate) fn summary_of(
        &self,
        key: &[u8],
        suite: &str,
        id: &TestId,
    ) -> Result<TestSummary, HistoryError> {
        // Once loaded, the index holds every summary there is.
        let cached = self.with_loaded_summaries(|index| index.get(key).cloned());
        let stored = match cached {
            Some(s) => s,
            None => self
                .tests
                .get(key)?
                .map(|b| read_summary(key, &b))
                .transpose()?,
        };
        Ok(stored.unwrap_or_else(|| new_summary(suite, id)))
    }

    /// What `f` takes from each test's summary: from the summary index if a query loaded it,
    /// else from sled (a plan does not load the index: 100,000 tests' summaries take ~50 MiB).
    /// Unless `named`, a summary read from sled may have empty names (`f` does not read them).
    pub(super) fn read_summaries<T>(
        &self,
        suite: &str,
        tests: &[TestId],
        named: bool,
        f: impl Fn(&TestSummary) -> T,
    ) -> Result<Vec<Option<T>>, HistoryError> {
        let from_index = self.with_loaded_summaries(|all| {
            tests
                .iter()
                .map(|t| all.get(&test_key(suite, t)).map(&f))
                .collect()
        });
        if let Some(found) = from_index {
            return Ok(found);
        }
        let keys: Vec<Vec<u8>> = tests.iter().map(|t| test_key(suite, t)).collect();
        let values = get_many(&self.tests, &keys)?;
        keys.iter()
            .zip(values)
            .map(|(key, value)| {
                let Some(value) = value else {
                    return Ok(None);
                };
                let summary = match named {
                    true => read_summary(key, &value)?,
                    false => decode_test_summary(key, &value)?.0,
                };
                Ok(Some(f(&summary)))
            })
            .collect()
    }

    /// Runs `f` over the summary index if a query has loaded it (a plan alone does not: a
    /// coordinator nobody queries keeps no summary in memory).
    pub(crate) fn with_loaded_summaries<T>(&self, f: impl FnOnce(&SummaryIndex) -> T) -> Option<T> {
        self.summaries
            .read()
            .expect("summary index lock")
            .as_ref()
            .map(f)
    }

    /// Runs `f` over the summary index, loading it from sled the first time.
    pub(crate) fn with_summaries<T>(
        &self,
        f: impl FnOnce(&SummaryIndex) -> T,
    ) -> Result<T, HistoryError> {
        {
            let guard = self.summaries.read().expect("summary index lock");
            if let Some(index) = guard.as_ref() {
                return Ok(f(index));
            }
        }
        let mut guard = self.summaries.write().expect("summary index lock");
        if guard.is_none() {
            let mut index = SummaryIndex::new();
            for kv in self.tests.iter() {
                let (k, v) = kv?;
                index.insert(k.to_vec(), read_summary(&k, &v)?);
            }
            *guard = Some(index);
        }
        Ok(f(guard.as_ref().expect("loaded above")))
    }

    /// Brings the summary index (if loaded) up to date with the tests just written: with their
    /// summaries, or, for those written while it was not loaded (a query may have loaded it
    /// since, from values older than these), with their summaries read back.
    pub(crate) fn summaries_written(&self, written: Written) -> Result<(), HistoryError> {
        let mut guard = self.summaries.write().expect("summary index lock");
        let Some(index) = guard.as_mut() else {
            return Ok(());
        };
        for (key, summary) in written {
            let summary = match summary {
                Some(s) => s,
                None => match self.tests.get(&key)? {
                    Some(value) => read_summary(&key, &value)?,
                    None => continue,
                },
            };
            index.insert(key, summary);
        }
        Ok(())
    }
}

/// A summary as stored, named after its key: since schema 4 a test's value does not repeat the
/// names its key holds.
pub(crate) fn named_summary(key: &[u8], mut s: TestSummary) -> Result<TestSummary, HistoryError> {
    if s.name.is_empty() {
        let (suite, id) = split_test_key(key).ok_or_else(|| HistoryError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "a test's key without its suite, binary and name".into(),
        })?;
        s.suite = suite;
        s.binary_id = id.binary_id;
        s.name = id.name;
    }
    Ok(s)
}

/// The summary at the front of a test's value, named.
pub(crate) fn read_summary(key: &[u8], value: &[u8]) -> Result<TestSummary, HistoryError> {
    named_summary(key, decode_test_summary(key, value)?.0)
}
