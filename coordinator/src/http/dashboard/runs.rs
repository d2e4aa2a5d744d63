//! The runs page (live runs and past ones, with the connected agents) and one run's page.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::response::Html;
use testfleet_model::{Outcome, RunId, RunState, RunSummary};

use super::html::{duration, esc, outcome_cell, page, test_link, time};
use super::{PageError, blocking, svg};
use crate::history::RunRecord;
use crate::http::Shared;
use crate::scheduler::Command;

/// Runs on a page.
const RUNS_SHOWN: usize = 50;
/// A page showing a running run reloads itself this often (seconds).
const LIVE_REFRESH: u32 = 3;

fn state_cell(s: RunState) -> &'static str {
    match s {
        RunState::Running => "<span class=\"running\">running</span>",
        RunState::Finished => "finished",
        RunState::Cancelled => "<span class=\"cancelled\">cancelled</span>",
    }
}

/// The cells every table of runs has, in the order of [`RUN_HEADERS`]: suite, state, tests, the
/// summary's counts, wall time and start.
fn run_cells(rec: &RunRecord, s: &RunSummary) -> String {
    let counts: String = [
        (s.passed, "passed"),
        (s.failed, "failed"),
        (s.flaky, "flaky"),
        (s.timed_out, "timed_out"),
        (s.skipped, "skipped"),
        (s.infra_errors, "infra_error"),
    ]
    .iter()
    .map(|(n, class)| {
        if *n == 0 {
            "<td class=\"n muted\">0</td>".to_string()
        } else {
            format!("<td class=\"n {class}\">{n}</td>")
        }
    })
    .collect();
    let wall = if s.wall_ms > 0 {
        duration(s.wall_ms)
    } else {
        "—".into()
    };
    format!(
        "<td>{}</td><td>{}</td><td class=\"n\">{}</td>{counts}<td class=\"n\">{wall}</td><td>{}</td>",
        esc(&rec.suite),
        state_cell(rec.state),
        rec.total_tests,
        time(rec.created_unix_ms),
    )
}
const RUN_HEADERS: &str = "<th>suite</th><th>state</th><th>tests</th><th>passed</th><th>failed</th>\
    <th>flaky</th><th>timed out</th><th>skipped</th><th>infra</th><th>wall</th><th>started</th>";

/// A record with its live summary, when the scheduler is running it.
async fn live(state: &Shared, mut rec: RunRecord) -> RunRecord {
    if rec.state == RunState::Running {
        let run_id = RunId(rec.run_id);
        if let Ok(Some(s)) = state
            .scheduler
            .ask(|reply| Command::GetRun { run_id, reply })
            .await
        {
            rec.state = s.state;
            rec.summary = Some(s.summary);
        }
    }
    rec
}

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    /// Show the runs older than this one (the next page).
    before: Option<u64>,
}

pub(super) async fn list(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let store = state.store.clone();
    let before = q.before.map(RunId);
    // One more than shown: whether there is an older page.
    let mut records = blocking(move || store.runs(before, RUNS_SHOWN + 1)).await?;
    let older = (records.len() > RUNS_SHOWN).then(|| {
        records.truncate(RUNS_SHOWN);
        records.last().map(|r| r.run_id)
    });
    let agents = state
        .scheduler
        .ask(|reply| Command::ListAgents { reply })
        .await?;
    let mut any_running = false;
    let mut rows = String::new();
    for rec in records {
        let rec = live(&state, rec).await;
        any_running |= rec.state == RunState::Running;
        let summary = rec.summary.clone().unwrap_or_default();
        let _ = write!(
            rows,
            "<tr class=\"run\"><td><a href=\"/runs/{id}\">{id}</a></td>{}<td><code>{}</code></td></tr>",
            run_cells(&rec, &summary),
            esc(&rec.revision.chars().take(12).collect::<String>()),
            id = rec.run_id,
        );
    }
    let mut body = String::from("<h2>Runs</h2>");
    if rows.is_empty() {
        body.push_str(if before.is_some() {
            "<p class=\"muted\">No older runs.</p>"
        } else {
            "<p class=\"muted\">No runs yet.</p>"
        });
    } else {
        let _ = write!(
            body,
            "<table id=\"runs\"><tr><th>run</th>{RUN_HEADERS}<th>revision</th></tr>{rows}</table>"
        );
    }
    let mut pages = Vec::new();
    if before.is_some() {
        pages.push("<a id=\"newest\" href=\"/\">newest runs</a>".to_owned());
    }
    if let Some(Some(last)) = older {
        pages.push(format!(
            "<a id=\"older\" href=\"/?before={last}\">older runs</a>"
        ));
    }
    if !pages.is_empty() {
        let _ = write!(body, "<p class=\"pages\">{}</p>", pages.join(" · "));
    }
    let _ = write!(body, "<h2>Agents connected ({})</h2>", agents.len());
    if !agents.is_empty() {
        body.push_str("<table id=\"agents\"><tr><th>agent</th><th>slots</th><th>busy</th><th>Docker</th><th>version</th></tr>");
        for a in &agents {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(a.agent_id.as_str()),
                a.slots,
                a.busy,
                if a.docker_available {
                    "yes".into()
                } else {
                    esc(&a.docker_status)
                },
                esc(&a.version)
            );
        }
        body.push_str("</table>");
    }
    Ok(page(
        "Runs",
        "Runs",
        any_running.then_some(LIVE_REFRESH),
        &body,
    ))
}

/// How bad an outcome is, for listing the worst first.
fn severity(o: Option<Outcome>) -> u8 {
    match o {
        Some(Outcome::Failed | Outcome::TimedOut) => 0,
        Some(Outcome::InfraError) => 1,
        Some(Outcome::Flaky) => 2,
        None => 3,
        Some(Outcome::Cancelled) => 4,
        Some(Outcome::Passed) => 5,
        Some(Outcome::Skipped) => 6,
    }
}

/// Tests in the run's duration chart.
const CHART_TESTS: usize = 20;

pub(super) async fn one(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let run_id: RunId = id
        .parse()
        .map_err(|_| PageError::not_found(format!("`{id}` is not a run id")))?;
    // A live page reloads itself every few seconds: it shows what is written and does not wait.
    // Only the scheduler can say a run is live: a stored record says "running" until the writer
    // has closed the run.
    let running = matches!(
        state.scheduler.ask(|reply| Command::GetRun { run_id, reply }).await,
        Ok(Some(s)) if s.state == RunState::Running
    );
    let note = if running {
        ""
    } else {
        super::history_note(&state).await
    };
    let store = state.store.clone();
    let (rec, mut tests) =
        blocking(move || Ok((store.run(run_id)?, store.run_tests(run_id)?))).await?;
    let Some(rec) = rec else {
        return Err(PageError::not_found(format!("run {run_id} does not exist")));
    };
    let rec = live(&state, rec).await;
    let summary = rec.summary.clone().unwrap_or_default();
    tests.sort_by(|a, b| {
        severity(a.outcome)
            .cmp(&severity(b.outcome))
            .then_with(|| (&a.binary_id, &a.name).cmp(&(&b.binary_id, &b.name)))
    });
    let mut body = format!(
        "{note}<table id=\"summary\"><tr>{RUN_HEADERS}<th>revision</th><th>branch</th></tr>\
         <tr>{}<td><code>{}</code></td><td>{}</td></tr></table>",
        run_cells(&rec, &summary),
        esc(&rec.revision),
        esc(&rec.branch),
    );
    if !summary.attempts_per_agent.is_empty() {
        body.push_str("<p>Attempts per agent: ");
        let per: Vec<String> = summary
            .attempts_per_agent
            .iter()
            .map(|(a, n)| format!("{} <strong>{n}</strong>", esc(a)))
            .collect();
        body.push_str(&per.join(", "));
        body.push_str("</p>");
    }
    let mut longest: Vec<(String, u64)> = tests
        .iter()
        .filter_map(|t| {
            let ms = t.attempts.iter().map(|a| a.duration_ms).max()?;
            Some((t.name.clone(), ms))
        })
        .collect();
    longest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    longest.truncate(CHART_TESTS);
    if !longest.is_empty() {
        let _ = write!(
            body,
            "<h2>Longest tests in this run</h2>{}",
            svg::bars(&longest)
        );
    }
    let _ = write!(
        body,
        "<h2>Tests ({} recorded)</h2><table id=\"tests\"><tr><th>test</th><th>outcome</th><th>attempts: status, duration, agent</th></tr>",
        tests.len()
    );
    for t in &tests {
        let attempts: Vec<String> = t
            .attempts
            .iter()
            .map(|a| {
                let status = a.status.label();
                format!(
                    "{}. <span class=\"{status}\">{status}</span> {} on {}",
                    a.attempt,
                    duration(a.duration_ms),
                    esc(&a.agent_id)
                )
            })
            .collect();
        let _ = write!(
            body,
            "<tr class=\"test\"><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            test_link(&rec.suite, &t.binary_id, &t.name),
            if t.quarantined {
                " <em>(quarantined)</em>"
            } else {
                ""
            },
            outcome_cell(t.outcome),
            attempts.join("<br>")
        );
    }
    body.push_str("</table>");
    let refresh = (rec.state == RunState::Running).then_some(LIVE_REFRESH);
    Ok(page(&format!("Run {run_id}"), "Runs", refresh, &body))
}
