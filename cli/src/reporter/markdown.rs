//! A Markdown summary of a run for CI job summaries (`$GITHUB_STEP_SUMMARY`, GitLab's report
//! artifacts): the counts, what failed with the start of its output, what was flaky, and the
//! slowest tests. Appended to its file, as those summaries expect.

use std::collections::BTreeMap;
use std::fmt::Write;

use testfleet_model::report::{FailureClass, FailureKind};
use testfleet_model::{
    AttemptStatus, EventKind, Outcome, RunEvent, RunState, RunSummary, TestFinished,
};

/// Lines of a failing test's output shown (the rest stays in the live report and JUnit).
const OUTPUT_LINES: usize = 30;
/// Slowest tests listed.
const SLOWEST: usize = 10;

#[derive(Default)]
pub struct MarkdownReporter {
    suite: String,
    run_id: String,
    /// Per test: its attempts (status, ms, agent) and the last failing output.
    tests: BTreeMap<(String, String), TestLines>,
    end: Option<(RunSummary, RunState)>,
    /// What history says of each failure, when the coordinator was asked.
    classes: BTreeMap<(String, String), FailureKind>,
}

/// How a failure's class reads in the summary.
fn class_text(k: &FailureKind) -> String {
    match k {
        FailureKind::New => "new".into(),
        FailureKind::Flaky => "known flaky".into(),
        FailureKind::Quarantined => "quarantined".into(),
        FailureKind::FailingOnDefault { branch, run_id } => {
            format!("already failing on {} (run {run_id})", html(branch))
        }
    }
}

/// The same, without the run: for counting alike failures together.
fn class_group(k: &FailureKind) -> String {
    match k {
        FailureKind::FailingOnDefault { branch, .. } => {
            format!("already failing on `{}`", branch.replace('`', "'"))
        }
        other => class_text(other),
    }
}

#[derive(Default)]
struct TestLines {
    attempts: Vec<(AttemptStatus, u64, String)>,
    outcome: Option<Outcome>,
    failure_output: String,
    quarantined: bool,
}

/// Escapes what Markdown tables and inline text would read as markup.
fn md(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('`', "\\`")
        .replace('*', "\\*")
        .replace('_', "\\_")
        .replace('<', "&lt;")
}

/// Escapes text inside HTML (the failures' `<details>`), where Markdown is not read.
fn html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;")
}

fn ms(v: u64) -> String {
    if v < 1000 {
        format!("{v} ms")
    } else {
        format!("{:.1} s", v as f64 / 1000.0)
    }
}

/// The binary beside a test's name, unless the name already starts with it (a pytest node id).
fn shown_binary<'a>(binary: &'a str, name: &str) -> &'a str {
    if testfleet_model::name_shows_binary(binary, name) {
        ""
    } else {
        binary
    }
}

impl MarkdownReporter {
    /// What history says of the run's failures (`ClassifyFailures`).
    pub fn set_classes(&mut self, classes: Vec<FailureClass>) {
        self.classes = classes
            .into_iter()
            .map(|c| ((c.binary_id, c.name), c.kind))
            .collect();
    }

    pub fn on_event(&mut self, e: &RunEvent) {
        self.run_id = e.run_id.to_string();
        match &e.kind {
            EventKind::RunStarted { suite, skipped, .. } => {
                self.suite = suite.clone();
                for t in skipped {
                    self.tests
                        .entry((t.binary_id.to_string(), t.name.to_string()))
                        .or_default()
                        .outcome = Some(Outcome::Skipped);
                }
            }
            EventKind::TestFinished(TestFinished {
                test,
                agent_id,
                result,
                final_outcome,
                lease_id,
                quarantined,
                ..
            }) => {
                let t = self
                    .tests
                    .entry((test.binary_id.to_string(), test.name.to_string()))
                    .or_default();
                if lease_id.is_some() {
                    t.attempts.push((
                        result.status,
                        result.duration.as_millis() as u64,
                        agent_id.clone(),
                    ));
                }
                if !matches!(
                    result.status,
                    AttemptStatus::Passed | AttemptStatus::Skipped
                ) {
                    let text = String::from_utf8_lossy(&result.output);
                    let mut shown: Vec<&str> = text.lines().take(OUTPUT_LINES).collect();
                    if !result.message.is_empty() {
                        shown.insert(0, &result.message);
                    }
                    t.failure_output = shown.join("\n");
                }
                t.quarantined |= quarantined;
                if final_outcome.is_some() {
                    t.outcome = *final_outcome;
                }
            }
            EventKind::RunFinished { summary, state } => {
                self.end = Some((summary.clone(), *state));
            }
            _ => {}
        }
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let Some((s, state)) = &self.end else {
            let _ = writeln!(
                out,
                "### testfleet: run {} of `{}` did not finish\n",
                self.run_id,
                md(&self.suite)
            );
            return out;
        };
        let verdict = match (state, s.exit_code()) {
            (RunState::Cancelled, _) => "cancelled",
            (_, 0) => "passed",
            (_, testfleet_model::exit_code::TESTS_FAILED) => "failed",
            _ => "incomplete",
        };
        let _ = writeln!(
            out,
            "### testfleet: run {} of `{}` {verdict}\n",
            self.run_id,
            md(&self.suite)
        );
        let _ = writeln!(
            out,
            "| passed | failed | flaky | timed out | skipped | infra errors | wall |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {} | {} | {} | {} | {} | {} | {} |\n",
            s.passed,
            s.failed,
            s.flaky,
            s.timed_out,
            s.skipped,
            s.infra_errors,
            ms(s.wall_ms)
        );
        let failing: Vec<_> = self
            .tests
            .iter()
            .filter(|(_, t)| {
                matches!(
                    t.outcome,
                    Some(Outcome::Failed | Outcome::TimedOut | Outcome::InfraError)
                )
            })
            .collect();
        if !failing.is_empty() {
            let mut groups: BTreeMap<String, usize> = BTreeMap::new();
            for (key, _) in &failing {
                if let Some(k) = self.classes.get(*key) {
                    *groups.entry(class_group(k)).or_default() += 1;
                }
            }
            let counted: Vec<String> = groups.iter().map(|(g, n)| format!("{n} {g}")).collect();
            let _ = writeln!(
                out,
                "#### Failed ({}){}\n",
                failing.len(),
                if counted.is_empty() {
                    String::new()
                } else {
                    format!(": {}", counted.join(", "))
                }
            );
            for ((binary, name), t) in failing {
                let class = self
                    .classes
                    .get(&(binary.clone(), name.clone()))
                    .map(|k| format!(" — {}", class_text(k)))
                    .unwrap_or_default();
                let outcome = t.outcome.map(|o| o.as_str()).unwrap_or("");
                let attempts: Vec<String> = t
                    .attempts
                    .iter()
                    .map(|(_, v, agent)| format!("{} on {}", ms(*v), html(agent)))
                    .collect();
                let _ = writeln!(
                    out,
                    "<details><summary><code>{}</code> {} — {outcome}{} ({}){class}</summary>\n\n```text\n{}\n```\n\n</details>\n",
                    html(name),
                    html(shown_binary(binary, name)),
                    if t.quarantined { ", quarantined" } else { "" },
                    attempts.join(", "),
                    t.failure_output.replace("```", "'''")
                );
            }
        }
        let flaky: Vec<_> = self
            .tests
            .iter()
            .filter(|(_, t)| t.outcome == Some(Outcome::Flaky))
            .collect();
        if !flaky.is_empty() {
            let _ = writeln!(
                out,
                "#### Flaky ({}): failed, then passed on a retry\n",
                flaky.len()
            );
            for ((binary, name), t) in flaky {
                let _ = writeln!(
                    out,
                    "- `{}` {} ({} attempts)",
                    name.replace('`', "'"),
                    md(shown_binary(binary, name)),
                    t.attempts.len()
                );
            }
            out.push('\n');
        }
        let mut slowest: Vec<(&str, u64)> = self
            .tests
            .iter()
            .filter_map(|((_, name), t)| {
                Some((name.as_str(), t.attempts.iter().map(|a| a.1).max()?))
            })
            .collect();
        slowest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        slowest.truncate(SLOWEST);
        if !slowest.is_empty() {
            out.push_str("#### Slowest tests\n\n| test | longest attempt |\n| --- | ---: |\n");
            for (name, v) in slowest {
                let _ = writeln!(out, "| `{}` | {} |", name.replace(['`', '|'], "'"), ms(v));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use testfleet_model::{AttemptResult, RunId, TestRef};

    fn event(kind: EventKind) -> RunEvent {
        RunEvent {
            seq: 0,
            run_id: RunId(7),
            at_unix_ms: 0,
            kind,
        }
    }

    fn finished(name: &str, status: AttemptStatus, outcome: Option<Outcome>) -> RunEvent {
        let mut result = AttemptResult::infra_error("");
        result.status = status;
        result.duration = Duration::from_millis(1500);
        result.output = b"thread panicked at src/lib.rs:3\n| a table? `code`".to_vec();
        event(EventKind::TestFinished(TestFinished {
            test: TestRef {
                index: 0,
                binary_id: "bin".into(),
                name: name.into(),
            },
            attempt: 1,
            agent_id: "ci-node-1".into(),
            result,
            final_outcome: outcome,
            lease_id: Some(1),
            quarantined: false,
        }))
    }

    #[test]
    fn the_summary_lists_counts_failures_with_output_flaky_tests_and_the_slowest() {
        let mut r = MarkdownReporter::default();
        r.on_event(&event(EventKind::RunStarted {
            suite: "my_suite".into(),
            total_tests: 3,
            skipped: vec![],
            quarantined: vec![],
        }));
        r.on_event(&finished(
            "t::fails",
            AttemptStatus::Failed,
            Some(Outcome::Failed),
        ));
        r.on_event(&finished("t::flaky", AttemptStatus::Failed, None));
        r.on_event(&finished(
            "t::flaky",
            AttemptStatus::Passed,
            Some(Outcome::Flaky),
        ));
        let summary = RunSummary {
            passed: 0,
            failed: 1,
            flaky: 1,
            wall_ms: 2500,
            ..RunSummary::default()
        };
        r.on_event(&event(EventKind::RunFinished {
            summary,
            state: RunState::Finished,
        }));
        let text = r.to_markdown();
        assert!(
            text.starts_with("### testfleet: run 7 of `my\\_suite` failed"),
            "{text}"
        );
        assert!(text.contains("| 0 | 1 | 1 | 0 | 0 | 0 | 2.5 s |"), "{text}");
        assert!(text.contains("#### Failed (1)"), "{text}");
        assert!(
            text.contains("<code>t::fails</code> bin — failed (1.5 s on ci-node-1)"),
            "{text}"
        );
        assert!(text.contains("thread panicked at src/lib.rs:3"), "{text}");
        assert!(
            text.contains("#### Flaky (1)") && text.contains("- `t::flaky` bin (2 attempts)"),
            "{text}"
        );
        assert!(text.contains("| `t::fails` | 1.5 s |"), "{text}");
        r.set_classes(vec![FailureClass {
            binary_id: "bin".into(),
            name: "t::fails".into(),
            kind: FailureKind::FailingOnDefault {
                branch: "main".into(),
                run_id: 3,
            },
        }]);
        let text = r.to_markdown();
        assert!(
            text.contains("#### Failed (1): 1 already failing on `main`"),
            "{text}"
        );
        assert!(
            text.contains("(1.5 s on ci-node-1) — already failing on main (run 3)</summary>"),
            "{text}"
        );
    }
}
