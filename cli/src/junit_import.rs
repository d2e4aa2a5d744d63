//! Reads JUnit XML from any test tool into imported tests: one per `testcase` (its `classname` as
//! the binary, its `name` as the test), with every attempt the file records (the model's
//! `junit::read`). A test named in several files gathers the attempts of all of them.

use std::collections::BTreeMap;
use std::path::Path;
use testfleet_coordinator::history::import::ImportedTest;
use testfleet_model::junit;

/// Output kept per attempt, as a run keeps by default.
const OUTPUT_CAP: usize = 64 * 1024;

/// The tests of `files`, in the order first seen; or the first file that is not JUnit, and why.
pub fn read(files: &[impl AsRef<Path>]) -> Result<Vec<ImportedTest>, String> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut tests: BTreeMap<(String, String), ImportedTest> = BTreeMap::new();
    for file in files {
        let file = file.as_ref();
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let found = parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for t in found {
            let key = (t.binary_id.clone(), t.name.clone());
            match tests.get_mut(&key) {
                Some(seen) => {
                    seen.attempts.extend(t.attempts);
                    seen.skipped &= t.skipped;
                }
                None => {
                    order.push(key.clone());
                    tests.insert(key, t);
                }
            }
        }
    }
    Ok(order.into_iter().filter_map(|k| tests.remove(&k)).collect())
}

/// The tests of one JUnit document: each case's `classname` is its binary.
pub fn parse(text: &str) -> Result<Vec<ImportedTest>, String> {
    Ok(junit::read::parse(text, OUTPUT_CAP)?
        .into_iter()
        .map(|c| ImportedTest {
            binary_id: c.classname,
            skipped: c.skipped.is_some(),
            name: c.name,
            attempts: c.attempts,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use testfleet_coordinator::history::import::outcome_of;
    use testfleet_model::Outcome;

    /// Each case becomes a test of its classname with the outcome its attempts add up to (the
    /// reading itself is the model's `junit::read`, tested there).
    #[test]
    fn cases_become_tests_of_their_classname_with_their_outcomes() {
        let xml = r#"<testsuite name="surefire">
  <testcase classname="com.example.PoolTest" name="reuses" time="0.5"/>
  <testcase classname="com.example.PoolTest" name="drains"><flakyError type="IOException"/></testcase>
  <testcase classname="com.example.PoolTest" name="grows"><error/><rerunError/></testcase>
  <testcase classname="com.example.PoolTest" name="later"><skipped/></testcase>
</testsuite>"#;
        let tests = parse(xml).unwrap();
        assert!(tests.iter().all(|t| t.binary_id == "com.example.PoolTest"));
        let outcomes: Vec<(&str, Outcome)> = tests
            .iter()
            .map(|t| (t.name.as_str(), outcome_of(t)))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("reuses", Outcome::Passed),
                ("drains", Outcome::Flaky),
                ("grows", Outcome::Failed),
                ("later", Outcome::Skipped)
            ]
        );
        assert_eq!(tests[0].attempts[0].duration, Duration::from_millis(500));
        assert_eq!(tests[2].attempts.len(), 2);
        assert!(parse("<html/>").unwrap_err().contains("not JUnit XML"));
    }

    #[test]
    fn a_test_in_several_files_gathers_their_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.xml");
        let b = dir.path().join("b.xml");
        std::fs::write(
            &a,
            r#"<testsuite name="s"><testcase classname="c" name="t"><failure/></testcase></testsuite>"#,
        )
        .unwrap();
        std::fs::write(
            &b,
            r#"<testsuite name="s"><testcase classname="c" name="t"/></testsuite>"#,
        )
        .unwrap();
        let tests = read(&[&a, &b]).unwrap();
        assert_eq!(tests.len(), 1);
        assert_eq!(outcome_of(&tests[0]), Outcome::Flaky);
        let missing = read(&[dir.path().join("nope.xml")]).unwrap_err();
        assert!(
            missing.contains("cannot read") && missing.contains("nope.xml"),
            "{missing}"
        );
    }
}
