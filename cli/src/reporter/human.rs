//! The human report: a progress bar (hidden when stderr is not a terminal), a line per settled test,
//! failures with their output as they happen, and a summary.

use std::collections::BTreeMap;
use std::time::Duration;

use console::style;
use indicatif::{ProgressBar, ProgressStyle};
use testfleet_model::{
    AttemptResult, EventKind, NoticeLevel, Outcome, RunEvent, RunState, RunSummary, TestFinished,
    TestRef, name_shows_binary,
};

pub struct HumanReporter {
    bar: ProgressBar,
    mode: String,
    /// Settled tests that did not pass, for the summary.
    problems: BTreeMap<(String, String), Outcome>,
    /// Quarantined tests, by index and by name.
    quarantined: std::collections::HashSet<u32>,
    quarantined_names: std::collections::HashSet<(String, String)>,
    started: bool,
}

fn secs(d: Duration) -> String {
    format!("{:>7.3}s", d.as_secs_f64())
}

fn label(t: &TestRef) -> String {
    label_of(&t.binary_id, &t.name)
}

/// The binary dimmed, the name in bold; a pytest node id already starts with its file, the
/// binary: once is enough.
fn label_of(binary: &str, name: &str) -> String {
    if name_shows_binary(binary, name) {
        return style(name).bold().to_string();
    }
    format!("{} {}", style(binary).dim(), style(name).bold())
}

impl HumanReporter {
    pub fn new(mode: String) -> Self {
        HumanReporter {
            bar: ProgressBar::hidden(),
            mode,
            problems: BTreeMap::new(),
            quarantined: Default::default(),
            quarantined_names: Default::default(),
            started: false,
        }
    }

    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn print_output(&self, t: &TestRef, attempt: u32, r: &AttemptResult) {
        if r.output.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&r.output);
        let mut block = format!(
            "{}\n",
            style(format!("--- output of {} (attempt {attempt}) ---", t.name)).dim()
        );
        block.push_str(text.trim_end());
        block.push('\n');
        block.push_str(&style("--- end of output ---").dim().to_string());
        self.println(&block);
    }

    /// An attempt ended: a retry line, or the test's outcome (with its output when it failed).
    fn on_finished(&mut self, finished: &TestFinished) {
        let TestFinished {
            test,
            attempt,
            agent_id,
            result,
            final_outcome,
            ..
        } = finished;
        let d = secs(result.duration);
        let why = if result.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", result.message)
        };
        match final_outcome {
            None => {
                self.println(&format!(
                    "{:>12} [{d}] {} attempt {attempt} on {agent_id}{why}; retrying",
                    style("RETRY").magenta(),
                    label(test)
                ));
                self.print_output(test, *attempt, result);
            }
            Some(outcome) => {
                self.bar.inc(1);
                let tag = match outcome {
                    Outcome::Passed => style("PASS").green(),
                    Outcome::Flaky => style("FLAKY").yellow().bold(),
                    Outcome::Failed => style("FAIL").red().bold(),
                    Outcome::TimedOut => style("TIMEOUT").red().bold(),
                    Outcome::InfraError => style("INFRA").red(),
                    Outcome::Skipped => style("SKIP").yellow(),
                    Outcome::Cancelled => style("CANCEL").yellow(),
                };
                let mut attempt_note = if *attempt > 1 {
                    format!(" attempt {attempt}")
                } else {
                    String::new()
                };
                if self.quarantined.contains(&test.index) {
                    attempt_note.push_str(" (quarantined)");
                }
                // A pass says why only when its runner had something to say (slow, leaky).
                self.println(&format!(
                    "{tag:>12} [{d}] {}{attempt_note} on {agent_id}{why}",
                    label(test)
                ));
                if outcome.fails_run() || *outcome == Outcome::InfraError {
                    self.print_output(test, *attempt, result);
                }
                if *outcome != Outcome::Passed {
                    self.problems.insert(
                        (test.binary_id.to_string(), test.name.to_string()),
                        *outcome,
                    );
                }
            }
        }
    }

    pub fn on_event(&mut self, e: &RunEvent) {
        match &e.kind {
            EventKind::RunStarted {
                suite,
                total_tests,
                skipped,
                quarantined,
            } => {
                if self.started {
                    // A resumed run starts again on a restarted coordinator: same run, same bar.
                    self.println(&format!(
                        "{:>12} run {} on a restarted coordinator",
                        style("RESUMED").cyan(),
                        e.run_id
                    ));
                    return;
                }
                self.started = true;
                self.quarantined = quarantined.iter().map(|t| t.index).collect();
                self.quarantined_names = quarantined
                    .iter()
                    .map(|t| (t.binary_id.to_string(), t.name.to_string()))
                    .collect();
                let runnable = total_tests - skipped.len() as u32;
                self.bar = ProgressBar::new(runnable as u64);
                self.bar
                    .set_draw_target(indicatif::ProgressDrawTarget::stderr());
                self.bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                self.println(&format!(
                    "{} run {} of {suite}: {runnable} tests ({} skipped) {}",
                    style("Starting").green().bold(),
                    e.run_id,
                    skipped.len(),
                    self.mode
                ));
                for t in skipped {
                    self.println(&format!("{:>12} {}", style("SKIP").yellow(), label(t)));
                }
                for t in quarantined {
                    self.println(&format!(
                        "{:>12} {} runs, but its failures do not fail the run",
                        style("QUARANTINE").yellow(),
                        label(t)
                    ));
                }
            }
            EventKind::TestStarted { test, .. } => self.bar.set_message(test.name.to_string()),
            EventKind::TestFinished(finished) => self.on_finished(finished),
            EventKind::Notice { level, message } => {
                let tag = match level {
                    NoticeLevel::Info => style("NOTE").cyan(),
                    NoticeLevel::Warning => style("WARNING").yellow(),
                    NoticeLevel::Error => style("ERROR").red(),
                };
                self.println(&format!("{tag:>12} {message}"));
            }
            EventKind::ServiceStarted {
                agent_id,
                service,
                scope,
                duration_ms,
                container_id,
            } => {
                let short: String = container_id.chars().take(12).collect();
                self.println(&format!(
                    "{:>12} [{}] {} ({} scope) on {agent_id}: container {short}",
                    style("SERVICE").cyan(),
                    secs(Duration::from_millis(*duration_ms)),
                    style(service).bold(),
                    scope.as_str()
                ));
            }
            EventKind::ImagePulled {
                agent_id,
                image,
                registry,
                duration_ms,
                error,
            } => {
                let took = secs(Duration::from_millis(*duration_ms));
                let line = match error {
                    None => format!(
                        "{:>12} [{took}] {} from {registry} on {agent_id}",
                        style("PULL").cyan(),
                        style(image).bold()
                    ),
                    Some(why) => format!(
                        "{:>12} [{took}] {} on {agent_id}: {why}",
                        style("PULL FAILED").red(),
                        style(image).bold()
                    ),
                };
                self.println(&line);
            }
            EventKind::LeaseFinished { .. } => {}
            EventKind::RunFinished { summary, state } => {
                self.bar.finish_and_clear();
                self.print_summary(summary, *state);
            }
        }
    }

    fn print_summary(&self, s: &RunSummary, state: RunState) {
        let mut parts = vec![format!("{} passed", s.passed)];
        let mut add = |n: u32, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        add(s.failed, "failed");
        add(s.flaky, "flaky");
        add(s.timed_out, "timed out");
        add(s.skipped, "skipped");
        add(s.infra_errors, "infrastructure errors");
        add(s.cancelled, "cancelled");
        add(s.quarantined, "quarantined failures (not gating)");
        let head = match (state, s.exit_code()) {
            (RunState::Cancelled, _) => style("Cancelled").yellow().bold(),
            (_, 0) => style("Summary").green().bold(),
            _ => style("Summary").red().bold(),
        };
        self.println(&format!(
            "{head:>12} [{}] {} tests: {}",
            secs(Duration::from_millis(s.wall_ms)),
            s.total(),
            parts.join(", ")
        ));
        let bound = s.lower_bound_ms();
        if bound > 0 && s.wall_ms > 0 {
            self.println(&format!(
                "{:>12} schedule: wall {:.2}s against a lower bound of {:.2}s (max(Σ durations / {} slots, longest test)): ratio {:.2}",
                "",
                s.wall_ms as f64 / 1000.0,
                bound as f64 / 1000.0,
                s.slots.max(1),
                s.wall_ms as f64 / bound as f64
            ));
        }
        if !s.attempts_per_agent.is_empty() {
            let agents: Vec<String> = s
                .attempts_per_agent
                .iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect();
            self.println(&format!(
                "{:>12} attempts per agent: {}",
                "",
                agents.join(", ")
            ));
        }
        for (what, timings) in [
            ("image pulls", &s.image_pulls),
            ("service starts", &s.service_starts),
        ] {
            if timings.is_empty() {
                continue;
            }
            let each: Vec<String> = timings
                .iter()
                .map(|(name, t)| {
                    let avg = t.total_ms as f64 / f64::from(t.count.max(1)) / 1000.0;
                    format!(
                        "{name} {}× (avg {avg:.2}s, max {:.2}s)",
                        t.count,
                        t.max_ms as f64 / 1000.0
                    )
                })
                .collect();
            self.println(&format!(
                "{:>12} {what} (not in test times): {}",
                "",
                each.join(", ")
            ));
        }
        for ((binary, name), outcome) in &self.problems {
            let tag = match outcome {
                Outcome::Flaky => style(outcome.as_str().to_uppercase()).yellow(),
                _ => style(outcome.as_str().to_uppercase()).red(),
            };
            let note = if self
                .quarantined_names
                .contains(&(binary.clone(), name.clone()))
            {
                " (quarantined: does not fail the run)"
            } else {
                ""
            };
            self.println(&format!("{tag:>12} {}{note}", label_of(binary, name)));
        }
    }
}
