//! Pages about tests across runs: the flaky ranking with its evidence, the slowest tests, and one
//! test's page with its duration trend and attempt log.

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::response::Html;
use testfleet_model::TestId;

use super::html::{duration, esc, outcome_cell, page, test_link, time};
use super::svg::{self, Point};
use super::{PageError, blocking};
use crate::history::query;
use crate::http::Shared;

/// Tests on the slowest-tests page.
const SLOWEST_SHOWN: usize = 30;
/// Evidence lines shown per flaky test.
const EVIDENCE_SHOWN: usize = 4;

fn percent(p: f64) -> String {
    format!("{:.1}%", p * 100.0)
}

pub(super) async fn flaky(State(state): State<Shared>) -> Result<Html<String>, PageError> {
    let note = super::history_note(&state).await;
    let store = state.store.clone();
    let tests = blocking(move || query::flaky(store.as_ref(), None)).await?;
    let mut body = String::from(note);
    body.push_str(
        "<p>Tests that passed and failed on the same revision, the most flip-prone first. \
         The failure probability counts attempts on revisions where the test passed at least once, \
         with its 95% Wilson interval.</p>",
    );
    if tests.is_empty() {
        body.push_str("<p class=\"muted\">No flaky tests found.</p>");
        return Ok(page("Flaky tests", "Flaky tests", None, &body));
    }
    body.push_str(
        "<table id=\"flaky\"><tr><th>#</th><th>test</th><th>suite</th><th>flip rate</th><th>failure probability</th>\
         <th>flaky revisions</th><th>failures / attempts</th><th>last flaky</th><th>evidence: run, attempt, revision, agent</th></tr>",
    );
    for (i, t) in tests.iter().enumerate() {
        let evidence: Vec<String> = t
            .evidence
            .iter()
            .rev()
            .take(EVIDENCE_SHOWN)
            .map(|e| {
                format!(
                    "<a href=\"/runs/{run}\">run {run}</a> #{} {} <code>{}</code> on {}",
                    e.attempt,
                    if e.failed {
                        "<span class=\"failed\">failed</span>"
                    } else {
                        "<span class=\"passed\">passed</span>"
                    },
                    esc(&e.revision.chars().take(12).collect::<String>()),
                    esc(&e.agent_id),
                    run = e.run_id,
                )
            })
            .collect();
        let _ = write!(
            body,
            "<tr class=\"flaky-test\"><td class=\"n\">{}</td><td>{}{}</td><td>{}</td><td class=\"n\">{:.2}</td>\
             <td class=\"n\">{} <span class=\"muted\">({}–{})</span></td><td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            test_link(&t.test.suite, &t.test.binary_id, &t.test.name),
            if t.quarantined {
                " <em>(quarantined)</em>"
            } else {
                ""
            },
            esc(&t.test.suite),
            t.flip_rate,
            percent(t.failure_probability),
            percent(t.probability_low),
            percent(t.probability_high),
            t.flaky_revisions,
            t.failures,
            t.attempts,
            t.last_flaky_ms.map(time).unwrap_or_else(|| "—".into()),
            evidence.join("<br>")
        );
    }
    body.push_str("</table>");
    Ok(page("Flaky tests", "Flaky tests", None, &body))
}

pub(super) async fn slowest(State(state): State<Shared>) -> Result<Html<String>, PageError> {
    let note = super::history_note(&state).await;
    let store = state.store.clone();
    let t = blocking(move || query::timings(store.as_ref(), None, SLOWEST_SHOWN, false)).await?;
    let mut body = String::from(note);
    if t.tests.is_empty() {
        body.push_str("<p class=\"muted\">No passing attempts recorded yet.</p>");
        return Ok(page("Slowest tests", "Slowest tests", None, &body));
    }
    let bars: Vec<(String, u64)> = t
        .tests
        .iter()
        .map(|x| (x.test.name.clone(), x.p95_ms))
        .collect();
    let _ = write!(
        body,
        "<h2>p95 of passing attempts</h2>{}<table id=\"slowest\"><tr><th>test</th><th>suite</th><th>samples</th><th>p50</th><th>p95</th><th>p99</th><th>slowdown</th></tr>",
        svg::bars(&bars)
    );
    for x in &t.tests {
        let slowdown = x
            .slowdown
            .as_ref()
            .map(|s| {
                format!(
                    "<span class=\"failed\">{} → {}</span>",
                    duration(s.baseline_ms),
                    duration(s.recent_ms)
                )
            })
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr class=\"slow-test\"><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{slowdown}</td></tr>",
            test_link(&x.test.suite, &x.test.binary_id, &x.test.name),
            esc(&x.test.suite),
            x.samples,
            duration(x.p50_ms),
            duration(x.p95_ms),
            duration(x.p99_ms),
        );
    }
    body.push_str("</table><h2>Suites</h2><table id=\"suites\"><tr><th>suite</th><th>tests</th><th>p50 of tests' p50</th><th>p95</th><th>sum of p50s</th></tr>");
    for s in &t.suites {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&s.suite),
            s.tests,
            duration(s.p50_ms),
            duration(s.p95_ms),
            duration(s.total_p50_ms)
        );
    }
    body.push_str("</table>");
    Ok(page("Slowest tests", "Slowest tests", None, &body))
}

#[derive(serde::Deserialize)]
pub(super) struct TestQuery {
    suite: String,
    binary: String,
    name: String,
}

pub(super) async fn one(
    State(state): State<Shared>,
    Query(q): Query<TestQuery>,
) -> Result<Html<String>, PageError> {
    let id = TestId {
        binary_id: q.binary.clone(),
        name: q.name.clone(),
    };
    let note = super::history_note(&state).await;
    let store = state.store.clone();
    let suite = q.suite.clone();
    let found = blocking(move || store.test_log(&suite, &id)).await?;
    let Some((summary, log)) = found else {
        return Err(PageError::not_found(format!(
            "no history for test `{} {}` in suite `{}`",
            q.binary, q.name, q.suite
        )));
    };
    let mut body = format!(
        "{note}<p>{} · suite {}</p><table id=\"test-summary\"><tr><th>runs</th><th>attempts</th><th>failures</th><th>last outcome</th>\
         <th>p50</th><th>p95</th><th>p99</th><th>flaky revisions</th><th>first seen</th><th>last seen</th></tr>\
         <tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr></table>",
        esc(&q.binary),
        esc(&q.suite),
        summary.runs,
        summary.attempts,
        summary.failures,
        summary
            .last_outcome
            .map(|o| outcome_cell(Some(o)))
            .unwrap_or_else(|| "—".into()),
        summary.p50_ms.map(duration).unwrap_or_else(|| "—".into()),
        summary.p95_ms.map(duration).unwrap_or_else(|| "—".into()),
        summary.p99_ms.map(duration).unwrap_or_else(|| "—".into()),
        summary.flaky_revisions,
        time(summary.first_seen_ms),
        time(summary.last_seen_ms),
    );
    let points: Vec<Point> = log
        .attempts
        .iter()
        .map(|a| Point {
            label: format!("run {} attempt {}", a.run_id, a.attempt),
            ms: a.duration_ms,
            failed: a.failed(),
        })
        .collect();
    let _ = write!(
        body,
        "<h2>Duration trend (last {} attempts; red: failed)</h2>{}",
        points.len(),
        svg::trend(&points)
    );
    body.push_str("<h2>Attempts, newest first</h2><table id=\"attempts\"><tr><th>run</th><th>attempt</th><th>status</th><th>duration</th><th>revision</th><th>agent</th><th>at</th></tr>");
    for a in log.attempts.iter().rev() {
        let status = a.status.label();
        let run = if a.run_id == 0 {
            "—".to_string()
        } else {
            format!("<a href=\"/runs/{0}\">{0}</a>", a.run_id)
        };
        let _ = write!(
            body,
            "<tr class=\"attempt\"><td>{run}</td><td class=\"n\">{}</td><td class=\"{status}\">{status}</td><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            a.attempt,
            duration(a.duration_ms),
            esc(&a.revision.chars().take(12).collect::<String>()),
            esc(&a.agent_id),
            time(a.at_unix_ms)
        );
    }
    body.push_str("</table>");
    Ok(page(&q.name, "", None, &body))
}
