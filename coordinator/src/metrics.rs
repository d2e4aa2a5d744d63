//! What the coordinator counts for Prometheus: counters fed by the scheduler as things happen, and
//! gauges the scheduler reports at scrape time; [`Metrics::render`] writes both in the text
//! exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use testfleet_model::{AttemptStatus, EventKind, Outcome, RunState, TestFinished};

/// Upper bounds (seconds) of the container-start histogram: from a warm local image (a fraction
/// of a second) to a database that takes a minute to accept connections.
const START_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];
/// Upper bounds (seconds) of the image-pull histogram: from a small image on a registry nearby to
/// gigabytes over a slow link.
const PULL_BUCKETS: [f64; 10] = [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 300.0];

/// Counters since the coordinator started. One uncontended lock per event: the scheduler is the
/// only writer, and a scrape holds it for microseconds.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    runs_started: u64,
    runs_finished: BTreeMap<&'static str, u64>,
    tests: BTreeMap<&'static str, u64>,
    attempts: BTreeMap<&'static str, u64>,
    leases_granted: u64,
    leases_lost: u64,
    service_starts: BTreeMap<String, Histogram>,
    /// By registry (images are too many to be labels).
    image_pulls: BTreeMap<String, Histogram>,
    pull_failures: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; 10],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, ms: u64, bounds: &[f64; 10]) {
        let secs = ms as f64 / 1000.0;
        for (bucket, le) in self.buckets.iter_mut().zip(bounds) {
            *bucket += u64::from(secs <= *le);
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// The histogram of `key` in `map`, made on first use.
fn histogram<'m>(map: &'m mut BTreeMap<String, Histogram>, key: &str) -> &'m mut Histogram {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), Histogram::default());
    }
    map.get_mut(key).expect("just inserted")
}

/// What the scheduler holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub runs_running: u64,
    pub tests_queued: u64,
    pub leases_active: u64,
    pub agents_connected: u64,
    pub slots_total: u64,
    pub slots_busy: u64,
}

fn state_label(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Cancelled => "cancelled",
    }
}

impl Metrics {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic elsewhere while counting leaves numbers that are still numbers.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts what a run event says happened.
    pub fn observe(&self, kind: &EventKind) {
        let mut c = self.counts();
        match kind {
            EventKind::RunStarted { skipped, .. } => {
                c.runs_started += 1;
                if !skipped.is_empty() {
                    *c.tests.entry(Outcome::Skipped.label()).or_default() += skipped.len() as u64;
                }
            }
            EventKind::TestFinished(TestFinished {
                result,
                final_outcome,
                lease_id,
                ..
            }) => {
                // Tests settled without running (cancelled, never servable) made no attempt.
                if lease_id.is_some() {
                    *c.attempts.entry(result.status.label()).or_default() += 1;
                }
                if let Some(o) = final_outcome {
                    *c.tests.entry(o.label()).or_default() += 1;
                }
            }
            EventKind::RunFinished { state, .. } => {
                *c.runs_finished.entry(state_label(*state)).or_default() += 1;
            }
            EventKind::ServiceStarted {
                service,
                duration_ms,
                ..
            } => histogram(&mut c.service_starts, service).observe(*duration_ms, &START_BUCKETS),
            EventKind::ImagePulled {
                registry,
                duration_ms,
                error,
                ..
            } => match error {
                None => {
                    histogram(&mut c.image_pulls, registry).observe(*duration_ms, &PULL_BUCKETS)
                }
                Some(_) => *c.pull_failures.entry(registry.clone()).or_default() += 1,
            },
            EventKind::TestStarted { .. }
            | EventKind::LeaseFinished { .. }
            | EventKind::Notice { .. } => {}
        }
    }

    pub fn lease_granted(&self) {
        self.counts().leases_granted += 1;
    }

    /// A lease taken back from its agent (gone, or silent past the lease timeout).
    pub fn lease_lost(&self) {
        self.counts().leases_lost += 1;
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let c = self.counts();
        let mut out = String::with_capacity(4096);
        let mut w = Writer { out: &mut out };
        w.family(
            "testfleet_runs_started_total",
            "counter",
            "Runs started (resumed runs count again).",
        );
        w.sample("testfleet_runs_started_total", &[], c.runs_started as f64);
        w.family(
            "testfleet_runs_finished_total",
            "counter",
            "Runs that ended, by final state.",
        );
        for state in [RunState::Finished, RunState::Cancelled] {
            let n = c
                .runs_finished
                .get(state_label(state))
                .copied()
                .unwrap_or(0);
            w.sample(
                "testfleet_runs_finished_total",
                &[("state", state_label(state))],
                n as f64,
            );
        }
        w.family(
            "testfleet_tests_total",
            "counter",
            "Tests settled, by final outcome.",
        );
        for o in Outcome::ALL {
            let n = c.tests.get(o.label()).copied().unwrap_or(0);
            w.sample("testfleet_tests_total", &[("outcome", o.label())], n as f64);
        }
        w.family(
            "testfleet_attempts_total",
            "counter",
            "Test attempts agents reported, by status (retries included).",
        );
        for s in AttemptStatus::ALL {
            let n = c.attempts.get(s.label()).copied().unwrap_or(0);
            w.sample(
                "testfleet_attempts_total",
                &[("status", s.label())],
                n as f64,
            );
        }
        w.family(
            "testfleet_leases_granted_total",
            "counter",
            "Leases of tests handed to agents.",
        );
        w.sample(
            "testfleet_leases_granted_total",
            &[],
            c.leases_granted as f64,
        );
        w.family(
            "testfleet_lease_expirations_total",
            "counter",
            "Leases taken back because their agent went away or fell silent past the lease timeout.",
        );
        w.sample(
            "testfleet_lease_expirations_total",
            &[],
            c.leases_lost as f64,
        );
        w.histograms(
            "testfleet_service_start_seconds",
            "Time agents took to start a service's container until it was ready, by service.",
            "service",
            &c.service_starts,
            &START_BUCKETS,
        );
        w.histograms(
            "testfleet_image_pull_seconds",
            "Time agents took to pull service images, by registry (apart from the starts).",
            "registry",
            &c.image_pulls,
            &PULL_BUCKETS,
        );
        w.family(
            "testfleet_image_pull_failures_total",
            "counter",
            "Pulls of service images that failed, by registry.",
        );
        for (registry, n) in &c.pull_failures {
            w.sample(
                "testfleet_image_pull_failures_total",
                &[("registry", registry)],
                *n as f64,
            );
        }
        for (name, help, v) in [
            (
                "testfleet_runs_running",
                "Runs in progress.",
                g.runs_running,
            ),
            (
                "testfleet_queue_depth",
                "Tests waiting for an agent, over all running runs.",
                g.tests_queued,
            ),
            (
                "testfleet_leases_active",
                "Leases agents hold now.",
                g.leases_active,
            ),
            (
                "testfleet_agents_connected",
                "Agents connected now.",
                g.agents_connected,
            ),
            (
                "testfleet_agent_slots",
                "Test slots of the connected agents.",
                g.slots_total,
            ),
            (
                "testfleet_agent_slots_busy",
                "Slots running or holding a leased test.",
                g.slots_busy,
            ),
        ] {
            w.family(name, "gauge", help);
            w.sample(name, &[], v as f64);
        }
        drop(c);
        out
    }
}

struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    /// One histogram family with a series per `label` value.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: &BTreeMap<String, Histogram>,
        bounds: &[f64; 10],
    ) {
        self.family(name, "histogram", help);
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        for (value, h) in series {
            for (n, le) in h.buckets.iter().zip(bounds) {
                self.sample(
                    &bucket,
                    &[(label, value), ("le", &le.to_string())],
                    *n as f64,
                );
            }
            self.sample(&bucket, &[(label, value), ("le", "+Inf")], h.count as f64);
            self.sample(&sum, &[(label, value)], h.sum);
            self.sample(&count, &[(label, value)], h.count as f64);
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline (the exposition format's rule).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use testfleet_model::{AttemptResult, RunSummary, Scope, TestRef};

    fn finished(status: AttemptStatus, outcome: Option<Outcome>) -> EventKind {
        let mut result = AttemptResult::infra_error("");
        result.status = status;
        EventKind::TestFinished(TestFinished {
            test: TestRef {
                index: 0,
                binary_id: "b".into(),
                name: "t".into(),
            },
            attempt: 1,
            agent_id: "a".into(),
            result,
            final_outcome: outcome,
            lease_id: Some(1),
            quarantined: false,
        })
    }

    #[test]
    fn events_become_counters_and_service_starts_a_histogram() {
        let m = Metrics::default();
        m.observe(&EventKind::RunStarted {
            suite: "s".into(),
            total_tests: 4,
            skipped: vec![TestRef {
                index: 3,
                binary_id: "b".into(),
                name: "ignored".into(),
            }],
            quarantined: vec![],
        });
        m.observe(&finished(AttemptStatus::Passed, Some(Outcome::Passed)));
        m.observe(&finished(AttemptStatus::Failed, None));
        m.observe(&finished(AttemptStatus::Passed, Some(Outcome::Flaky)));
        m.observe(&EventKind::ServiceStarted {
            agent_id: "a".into(),
            service: "db \"main\"".into(),
            scope: Scope::Agent,
            duration_ms: 700,
            container_id: "c".into(),
        });
        for (ms, error) in [(1_800, None), (40, Some("manifest unknown".to_owned()))] {
            m.observe(&EventKind::ImagePulled {
                agent_id: "a".into(),
                image: "127.0.0.1:5000/db:1".into(),
                registry: "127.0.0.1:5000".into(),
                duration_ms: ms,
                error,
            });
        }
        m.observe(&EventKind::RunFinished {
            summary: RunSummary::default(),
            state: RunState::Finished,
        });
        m.lease_granted();
        m.lease_lost();
        let text = m.render(&Gauges {
            tests_queued: 7,
            ..Gauges::default()
        });
        for line in [
            "testfleet_runs_started_total 1",
            "testfleet_runs_finished_total{state=\"finished\"} 1",
            "testfleet_tests_total{outcome=\"passed\"} 1",
            "testfleet_tests_total{outcome=\"flaky\"} 1",
            "testfleet_tests_total{outcome=\"skipped\"} 1",
            "testfleet_tests_total{outcome=\"failed\"} 0",
            "testfleet_attempts_total{status=\"passed\"} 2",
            "testfleet_attempts_total{status=\"failed\"} 1",
            "testfleet_leases_granted_total 1",
            "testfleet_lease_expirations_total 1",
            "testfleet_queue_depth 7",
            "testfleet_service_start_seconds_bucket{service=\"db \\\"main\\\"\",le=\"0.5\"} 0",
            "testfleet_service_start_seconds_bucket{service=\"db \\\"main\\\"\",le=\"1\"} 1",
            "testfleet_service_start_seconds_bucket{service=\"db \\\"main\\\"\",le=\"+Inf\"} 1",
            "testfleet_service_start_seconds_sum{service=\"db \\\"main\\\"\"} 0.7",
            "testfleet_image_pull_seconds_bucket{registry=\"127.0.0.1:5000\",le=\"1\"} 0",
            "testfleet_image_pull_seconds_bucket{registry=\"127.0.0.1:5000\",le=\"2.5\"} 1",
            "testfleet_image_pull_seconds_count{registry=\"127.0.0.1:5000\"} 1",
            "testfleet_image_pull_failures_total{registry=\"127.0.0.1:5000\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
