//! Reads JUnit XML from any test tool into imported tests: one per `testcase` (its `classname` as
//! the binary, its `name` as the test), with every attempt the file records — `flakyFailure` and
//! `flakyError` are failed attempts before a final pass, `rerunFailure` and `rerunError` failed
//! attempts besides the final failure (Maven Surefire's convention, which testfleet's own JUnit
//! output follows). A test named in several files gathers the attempts of all of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use testfleet_coordinator::history::import::ImportedTest;
use testfleet_model::{AttemptResult, AttemptStatus};

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

/// The test cases of one JUnit document.
pub fn parse(text: &str) -> Result<Vec<ImportedTest>, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Err(format!(
            "not JUnit XML: the root element is <{}>, not <testsuites> or <testsuite>",
            root.tag_name().name()
        ));
    }
    let mut out = Vec::new();
    for case in root.descendants().filter(|n| n.has_tag_name("testcase")) {
        let Some(name) = case.attribute("name").filter(|n| !n.is_empty()) else {
            continue;
        };
        let binary_id = case
            .attribute("classname")
            .filter(|c| !c.is_empty())
            .or_else(|| {
                case.ancestors()
                    .find(|a| a.has_tag_name("testsuite"))
                    .and_then(|s| s.attribute("name"))
            })
            .unwrap_or("junit")
            .to_owned();
        let time = seconds(case.attribute("time"));
        let case_output = [
            child_text(case, "system-out"),
            child_text(case, "system-err"),
        ]
        .concat();
        let mut attempts = Vec::new();
        let mut skipped = false;
        let mut final_attempt = Some(attempt(AttemptStatus::Passed, time, "", ""));
        for child in case.children().filter(|n| n.is_element()) {
            let tag = child.tag_name().name();
            match tag {
                "skipped" => {
                    skipped = true;
                    final_attempt = None;
                }
                "failure" | "error" => {
                    final_attempt = Some(attempt(
                        status_of(child.attribute("type")),
                        time,
                        child.attribute("message").unwrap_or(""),
                        &[child.text().unwrap_or(""), &case_output].concat(),
                    ));
                }
                "flakyFailure" | "flakyError" | "rerunFailure" | "rerunError" => {
                    let own_out = [
                        child.text().unwrap_or(""),
                        &child_text(child, "stackTrace"),
                        &child_text(child, "system-out"),
                        &child_text(child, "system-err"),
                    ]
                    .concat();
                    attempts.push(attempt(
                        status_of(child.attribute("type")),
                        seconds(child.attribute("time")),
                        child.attribute("message").unwrap_or(""),
                        &own_out,
                    ));
                }
                _ => {}
            }
        }
        attempts.extend(final_attempt);
        out.push(ImportedTest {
            binary_id,
            name: name.to_owned(),
            attempts: if skipped { Vec::new() } else { attempts },
            skipped,
        });
    }
    Ok(out)
}

fn seconds(attr: Option<&str>) -> Duration {
    attr.and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_default()
}

fn child_text(node: roxmltree::Node<'_, '_>, tag: &str) -> String {
    node.children()
        .filter(|n| n.has_tag_name(tag))
        .filter_map(|n| n.text())
        .collect()
}

/// A timeout (testfleet writes `type="timeout"`) or an infrastructure error stays what it was;
/// everything else that did not pass failed.
fn status_of(kind: Option<&str>) -> AttemptStatus {
    match kind {
        Some("timeout") => AttemptStatus::TimedOut,
        Some("infrastructure") => AttemptStatus::InfraError,
        _ => AttemptStatus::Failed,
    }
}

fn attempt(
    status: AttemptStatus,
    duration: Duration,
    message: &str,
    output: &str,
) -> AttemptResult {
    let mut bytes = output.as_bytes().to_vec();
    let omitted = bytes.len().saturating_sub(OUTPUT_CAP);
    bytes.truncate(OUTPUT_CAP);
    AttemptResult {
        status,
        duration,
        exit_code: None,
        signal: None,
        output: bytes,
        output_omitted_bytes: omitted as u64,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testfleet_coordinator::history::import::outcome_of;
    use testfleet_model::Outcome;

    /// Shapes real tools write: pytest (classname, system-out), Surefire (flakyFailure,
    /// rerunFailure, error), a bare testsuite root with no classname.
    #[test]
    fn cases_become_tests_with_their_attempts_and_outcomes() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="pytest" tests="5">
    <testcase classname="tests.test_db" name="test_insert" time="0.250"/>
    <testcase classname="tests.test_db" name="test_flaky" time="0.1">
      <flakyFailure message="connection reset" type="AssertionError">trace one</flakyFailure>
    </testcase>
    <testcase classname="tests.test_db" name="test_broken" time="1.5">
      <failure message="assert 1 == 2">E   assert 1 == 2</failure>
      <rerunFailure message="assert 1 == 2" time="1.4">again</rerunFailure>
      <system-out>printed</system-out>
    </testcase>
    <testcase classname="tests.test_db" name="test_later"><skipped message="not yet"/></testcase>
    <testcase classname="tests.test_db" name="test_slow" time="9"><failure type="timeout" message="timed out"/></testcase>
  </testsuite>
</testsuites>"#;
        let tests = parse(xml).unwrap();
        let by_name: BTreeMap<&str, &ImportedTest> =
            tests.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(tests.len(), 5);
        assert!(tests.iter().all(|t| t.binary_id == "tests.test_db"));
        assert_eq!(outcome_of(by_name["test_insert"]), Outcome::Passed);
        assert_eq!(
            by_name["test_insert"].attempts[0].duration,
            Duration::from_millis(250)
        );
        assert_eq!(outcome_of(by_name["test_flaky"]), Outcome::Flaky);
        assert_eq!(
            by_name["test_flaky"].attempts[0].message,
            "connection reset"
        );
        let broken = by_name["test_broken"];
        assert_eq!(outcome_of(broken), Outcome::Failed);
        assert_eq!(broken.attempts.len(), 2);
        let last = broken.attempts.last().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&last.output),
            "E   assert 1 == 2printed"
        );
        assert_eq!(outcome_of(by_name["test_later"]), Outcome::Skipped);
        assert_eq!(outcome_of(by_name["test_slow"]), Outcome::TimedOut);

        let bare = parse(r#"<testsuite name="jest"><testcase name="adds"/></testsuite>"#).unwrap();
        assert_eq!(bare[0].binary_id, "jest");
        assert!(parse("<html/>").unwrap_err().contains("not JUnit XML"));
        assert!(parse("not xml").unwrap_err().contains("not XML"));
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
