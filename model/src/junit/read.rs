//! Reading JUnit XML as any tool writes it: one [`Case`] per `testcase`, with every attempt the
//! file records. `flakyFailure` and `flakyError` are failed attempts before a final pass,
//! `rerunFailure` and `rerunError` failed attempts besides the final failure (Maven Surefire's
//! convention, which testfleet's own JUnit output follows). Shared by `testfleet import junit`
//! and the agent's runners for tools that write JUnit (pytest, a command).

use std::time::Duration;

use crate::{AttemptResult, AttemptStatus};

/// One `testcase` of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its `classname`, else the enclosing `testsuite`'s name, else `junit`.
    pub classname: String,
    pub name: String,
    /// In the order they ran; the last is the final verdict. Empty when the test was skipped.
    pub attempts: Vec<AttemptResult>,
    /// `Some(message)` when the tool skipped the test; pytest's expected failures (`xfail`) say so
    /// first (`xfail: reason`).
    pub skipped: Option<String>,
}

/// The test cases of one JUnit document, each attempt's output cut to `output_cap` bytes.
pub fn parse(text: &str, output_cap: usize) -> Result<Vec<Case>, String> {
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
        let classname = case
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
        let attempt = |status, duration, message: &str, output: &str| {
            let mut bytes = output.as_bytes().to_vec();
            let omitted = bytes.len().saturating_sub(output_cap);
            bytes.truncate(output_cap);
            AttemptResult {
                status,
                duration,
                exit_code: None,
                signal: None,
                output: bytes,
                output_omitted_bytes: omitted as u64,
                message: message.to_owned(),
                case: None,
            }
        };
        let mut attempts = Vec::new();
        let mut skipped = None;
        let mut final_attempt = Some(attempt(AttemptStatus::Passed, time, "", &case_output));
        for child in case.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "skipped" => {
                    let message = child.attribute("message").unwrap_or("");
                    skipped = Some(match child.attribute("type") {
                        Some("pytest.xfail") if message.is_empty() => "xfail".to_owned(),
                        Some("pytest.xfail") => format!("xfail: {message}"),
                        _ => message.to_owned(),
                    });
                    final_attempt = None;
                }
                "failure" | "error" => {
                    final_attempt = Some(attempt(
                        status_of(child.attribute("type")),
                        time,
                        child.attribute("message").unwrap_or(""),
                        &joined(child.text().unwrap_or(""), &case_output),
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
        out.push(Case {
            classname,
            name: name.to_owned(),
            attempts: if skipped.is_some() {
                Vec::new()
            } else {
                attempts
            },
            skipped,
        });
    }
    Ok(out)
}

/// A failure's text, then what the test printed, on lines of their own.
fn joined(failure: &str, output: &str) -> String {
    if failure.is_empty() || output.is_empty() || failure.ends_with('\n') {
        [failure, output].concat()
    } else {
        format!("{failure}\n{output}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes real tools write: pytest (classname, system-out), Surefire (flakyFailure,
    /// rerunFailure, error), a bare testsuite root with no classname.
    #[test]
    fn cases_carry_their_attempts_output_and_skips() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="pytest" tests="5">
    <testcase classname="tests.test_db" name="test_insert" time="0.250"><system-out>hello</system-out></testcase>
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
        let cases = parse(xml, 1024).unwrap();
        assert_eq!(cases.len(), 5);
        assert!(cases.iter().all(|c| c.classname == "tests.test_db"));
        let [insert, flaky, broken, later, slow] = &cases[..] else {
            unreachable!()
        };
        assert_eq!(insert.attempts.len(), 1);
        assert_eq!(insert.attempts[0].status, AttemptStatus::Passed);
        assert_eq!(insert.attempts[0].duration, Duration::from_millis(250));
        assert_eq!(insert.attempts[0].output, b"hello");
        let statuses = |c: &Case| c.attempts.iter().map(|a| a.status).collect::<Vec<_>>();
        assert_eq!(
            statuses(flaky),
            [AttemptStatus::Failed, AttemptStatus::Passed]
        );
        assert_eq!(flaky.attempts[0].message, "connection reset");
        assert_eq!(
            statuses(broken),
            [AttemptStatus::Failed, AttemptStatus::Failed]
        );
        assert_eq!(broken.attempts[1].output, b"E   assert 1 == 2\nprinted");
        assert_eq!(later.skipped.as_deref(), Some("not yet"));
        assert!(later.attempts.is_empty());
        assert_eq!(statuses(slow), [AttemptStatus::TimedOut]);

        let bare = parse(
            r#"<testsuite name="jest"><testcase name="adds"/></testsuite>"#,
            9,
        )
        .unwrap();
        assert_eq!(bare[0].classname, "jest");
        assert!(parse("<html/>", 9).unwrap_err().contains("not JUnit XML"));
        assert!(parse("not xml", 9).unwrap_err().contains("not XML"));
    }

    #[test]
    fn output_is_cut_to_the_cap_and_the_rest_counted() {
        let xml = r#"<testsuite><testcase classname="c" name="t"><system-out>0123456789</system-out></testcase></testsuite>"#;
        let a = &parse(xml, 4).unwrap()[0].attempts[0];
        assert_eq!(
            (a.output.as_slice(), a.output_omitted_bytes),
            (&b"0123"[..], 6)
        );
    }
}
