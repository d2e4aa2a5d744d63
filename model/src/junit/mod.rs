//! JUnit XML, as CI systems read it: one `testsuite` per test binary; flaky tests are successes with
//! `flakyFailure` entries, failed tests carry their earlier attempts as `rerunFailure`. Pure (events
//! in, XML out), so the CLI's reporter and the fuzzer share it. [`read`] goes the other way.

pub mod read;

use std::collections::BTreeMap;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};

pub use quick_junit::SerializeError;

use crate::{AttemptResult, AttemptStatus, EventKind, IdStyle, Outcome, RunEvent, TestFinished};

#[derive(Default)]
struct TestEntry {
    attempts: Vec<AttemptResult>,
    outcome: Option<Outcome>,
    quarantined: bool,
}

#[derive(Default)]
pub struct JunitReporter {
    suite: String,
    run_id: String,
    /// binary id → test name → entry, ordered for a stable file.
    tests: BTreeMap<String, BTreeMap<String, TestEntry>>,
    wall_ms: u64,
    /// How the suite's tool names its cases, when the report names them so (pytest's node ids).
    id_style: Option<IdStyle>,
}

fn outcome_word(o: Option<Outcome>) -> &'static str {
    o.map(Outcome::as_str).unwrap_or("unsettled")
}

fn kind_of(status: AttemptStatus) -> NonSuccessKind {
    match status {
        AttemptStatus::InfraError => NonSuccessKind::Error,
        _ => NonSuccessKind::Failure,
    }
}

fn type_of(status: AttemptStatus) -> &'static str {
    match status {
        AttemptStatus::TimedOut => "timeout",
        AttemptStatus::InfraError => "infrastructure",
        _ => "failure",
    }
}

fn rerun(a: &AttemptResult) -> TestRerun {
    let mut r = TestRerun::new(kind_of(a.status));
    r.set_time(a.duration)
        .set_message(a.message.clone())
        .set_type(type_of(a.status))
        .set_system_out_lossy(&a.output);
    r
}

impl JunitReporter {
    /// Names the cases as the suite's tool names them in its own report (pytest: classname
    /// `tests.test_x.Class`, name `test_y`), so CI systems that key history on those names keep
    /// it. A case whose last attempt carries its tool's own names (read from the tool's JUnit)
    /// keeps those; otherwise, and for ids that say no more, a case is named by its test id, its
    /// classname is its binary.
    pub fn name_cases_like(&mut self, style: IdStyle) {
        self.id_style = Some(style);
    }

    pub fn on_event(&mut self, e: &RunEvent) {
        self.run_id = e.run_id.to_string();
        match &e.kind {
            EventKind::RunStarted {
                suite,
                skipped,
                quarantined,
                ..
            } => {
                self.suite = suite.clone();
                for t in skipped {
                    let entry = self.entry(&t.binary_id, &t.name);
                    entry.outcome = Some(Outcome::Skipped);
                }
                for t in quarantined {
                    self.entry(&t.binary_id, &t.name).quarantined = true;
                }
            }
            EventKind::TestFinished(TestFinished {
                test,
                result,
                final_outcome,
                ..
            }) => {
                let entry = self.entry(&test.binary_id, &test.name);
                entry.attempts.push(result.clone());
                entry.outcome = *final_outcome;
            }
            EventKind::RunFinished { summary, .. } => self.wall_ms = summary.wall_ms,
            EventKind::TestStarted { .. }
            | EventKind::Notice { .. }
            | EventKind::ServiceStarted { .. }
            | EventKind::ImagePulled { .. }
            | EventKind::LeaseFinished { .. } => {}
        }
    }

    fn entry(&mut self, binary: &str, name: &str) -> &mut TestEntry {
        self.tests
            .entry(binary.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
    }

    fn case(name: &str, classname: &str, e: &TestEntry) -> TestCase {
        let last = e.attempts.last();
        let earlier = &e.attempts[..e.attempts.len().saturating_sub(1)];
        let status = match e.outcome {
            Some(Outcome::Passed) => TestCaseStatus::success(),
            Some(Outcome::Flaky) => {
                let mut s = TestCaseStatus::success();
                s.add_reruns(
                    earlier
                        .iter()
                        .filter(|a| a.status != AttemptStatus::Passed)
                        .map(rerun),
                );
                s
            }
            Some(Outcome::Skipped) => {
                let mut s = TestCaseStatus::skipped();
                // Skipped when it ran (pytest's skip or xfail): the test's reason. A test never
                // run (libtest's ignored) has none.
                if let Some(last) = last.filter(|a| a.status == AttemptStatus::Skipped) {
                    s.set_message(last.message.clone());
                }
                s
            }
            Some(Outcome::Cancelled) | None => {
                let mut s = TestCaseStatus::skipped();
                s.set_message("cancelled before it finished");
                s
            }
            // A quarantined test's failure is reported, but as skipped: CI must not fail on it.
            Some(Outcome::Failed | Outcome::TimedOut) if e.quarantined => {
                let last = last.expect("a failed test has an attempt");
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!(
                    "quarantined test {}: {}",
                    outcome_word(e.outcome),
                    last.message
                ))
                .set_description(String::from_utf8_lossy(&last.output).into_owned());
                s
            }
            Some(Outcome::Failed | Outcome::TimedOut | Outcome::InfraError) => {
                let last = last.expect("a failed test has an attempt");
                let mut s = TestCaseStatus::non_success(kind_of(last.status));
                s.set_message(last.message.clone())
                    .set_type(type_of(last.status))
                    .set_description(String::from_utf8_lossy(&last.output).into_owned());
                s.add_reruns(earlier.iter().map(rerun));
                s
            }
        };
        let mut case = TestCase::new(name, status);
        case.set_classname(classname);
        if e.quarantined {
            case.add_property(quick_junit::Property::new("testfleet.quarantined", "true"));
        }
        // Output of passing attempts is left out, as CI systems show only failures' output anyway.
        if let Some(last) = last {
            case.set_time(last.duration);
        }
        case
    }

    /// The report as JUnit XML.
    pub fn to_xml(&self) -> Result<String, SerializeError> {
        let mut report = Report::new(format!("testfleet run {} of {}", self.run_id, self.suite));
        report.set_time(std::time::Duration::from_millis(self.wall_ms));
        for (binary, tests) in &self.tests {
            let mut suite = TestSuite::new(binary.clone());
            suite.add_test_cases(tests.iter().map(|(id, e)| {
                // The tool's own names when its report gave them, else what its ids say.
                let own = e.attempts.last().and_then(|a| a.case.clone());
                match own
                    .map(|c| (c.classname, c.name))
                    .or_else(|| self.id_style.and_then(|s| s.case_of(id)))
                {
                    Some((classname, name)) => Self::case(&name, &classname, e),
                    None => Self::case(id, binary, e),
                }
            }));
            report.add_test_suite(suite);
        }
        // Names, messages and output are the tests' own: characters XML 1.0 forbids (U+FFFE,
        // U+FFFF, stray control characters) would make the whole file unreadable to CI. None can
        // be part of markup, so they are replaced in the finished text (found by fuzzing).
        Ok(report.to_string()?.chars().map(xml_char).collect())
    }
}

fn xml_char(c: char) -> char {
    match c {
        '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => c,
        _ => '\u{FFFD}',
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunId, RunState, RunSummary, TestRef};

    fn feed(r: &mut JunitReporter, kind: EventKind) {
        r.on_event(&RunEvent {
            seq: 1,
            run_id: RunId(1),
            at_unix_ms: 0,
            kind,
        });
    }

    /// A pytest binary's cases carry pytest's own names; a test that skipped itself says why.
    #[test]
    fn pytest_cases_are_named_as_pytest_names_them_and_skips_keep_their_reason() {
        let mut r = JunitReporter::default();
        r.name_cases_like(IdStyle::Pytest);
        let finished = |index: u32, name: &str, status: AttemptStatus, outcome: Outcome| {
            let mut result = AttemptResult::infra_error(if status == AttemptStatus::Skipped {
                "xfail: flaky upstream"
            } else {
                ""
            });
            result.status = status;
            EventKind::TestFinished(TestFinished {
                test: TestRef {
                    index,
                    binary_id: "tests/test_x.py".into(),
                    name: name.into(),
                },
                attempt: 1,
                agent_id: "a".into(),
                result,
                final_outcome: Some(outcome),
                lease_id: Some(1),
                quarantined: false,
            })
        };
        for kind in [
            finished(
                0,
                "tests/test_x.py::TestA::test_y[1-2]",
                AttemptStatus::Passed,
                Outcome::Passed,
            ),
            finished(
                1,
                "tests/test_x.py::test_z",
                AttemptStatus::Skipped,
                Outcome::Skipped,
            ),
        ] {
            feed(&mut r, kind);
        }
        let xml = r.to_xml().unwrap();
        let cases = read::parse(&xml, 1024).unwrap();
        let names: Vec<(&str, &str, Option<&str>)> = cases
            .iter()
            .map(|c| (c.classname.as_str(), c.name.as_str(), c.skipped.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("tests.test_x.TestA", "test_y[1-2]", None),
                ("tests.test_x", "test_z", Some("xfail: flaky upstream")),
            ]
        );
    }

    /// The fuzzer's first finding: a test whose name and output held U+FFFF made a report no XML
    /// parser would read.
    #[test]
    fn characters_xml_forbids_never_reach_the_report() {
        let mut r = JunitReporter::default();
        let test = TestRef {
            index: 0,
            binary_id: "bin\u{FFFF}".into(),
            name: "name\u{FFFE}\u{1}".into(),
        };
        let mut result = AttemptResult::infra_error("message \u{FFFF} \u{8}");
        result.status = AttemptStatus::Failed;
        result.output = "out \u{FFFF} \u{1b}[31m".as_bytes().to_vec();
        for kind in [
            EventKind::TestFinished(TestFinished {
                test,
                attempt: 1,
                agent_id: "a".into(),
                result,
                final_outcome: Some(Outcome::Failed),
                lease_id: None,
                quarantined: false,
            }),
            EventKind::RunFinished {
                summary: RunSummary::default(),
                state: RunState::Finished,
            },
        ] {
            feed(&mut r, kind);
        }
        let xml = r.to_xml().unwrap();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        let name = case.attribute("name").unwrap();
        assert!(name.starts_with("name\u{FFFD}"), "{name:?}");
        assert!(!xml.contains(['\u{FFFE}', '\u{FFFF}', '\u{1}']));
    }
}
