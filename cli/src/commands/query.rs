//! `testfleet flaky | timings | history | runs | quarantine`: history as tables or JSON.

use serde::Serialize;
use testfleet_model::report::{FlakyTest, QuarantineInfo};
use testfleet_model::{RunId, exit_code, test_label};

use crate::answer::say;
use crate::args::{FlakyArgs, HistoryArgs, QuarantineCommand, QueryArgs, RunsArgs, TimingsArgs};
use crate::error::{CliError, CliResult};
use crate::history_client::{Backend, QuarantineAction};

fn print_json<T: Serialize>(value: &T) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialize")
    );
}

fn pct(p: f64) -> String {
    format!("{:.1}%", p * 100.0)
}

fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms.filter(|m| *m > 0) else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(ms);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn print_flaky(tests: &[FlakyTest]) {
    if tests.is_empty() {
        say!("no flaky tests: none passed and failed on the same revision");
        return;
    }
    say!(
        "{:<50} {:>8} {:>9} {:>6} {:>24} {:>10}",
        "TEST",
        "ATTEMPTS",
        "FAILURES",
        "FLIPS",
        "P(FAIL) [95% CI]",
        "LAST FLAKE"
    );
    for t in tests {
        let name = format!(
            "{}{}",
            test_label(&t.test.binary_id, &t.test.name),
            if t.quarantined { " [Q]" } else { "" }
        );
        say!(
            "{:<50} {:>8} {:>9} {:>6.2} {:>24} {:>10}",
            name,
            t.attempts,
            t.failures,
            t.flip_rate,
            format!(
                "{} [{}–{}]",
                pct(t.failure_probability),
                pct(t.probability_low),
                pct(t.probability_high)
            ),
            ago(t.last_flaky_ms)
        );
        let runs: Vec<String> = t
            .evidence
            .iter()
            .map(|e| {
                format!(
                    "run {} #{} {} on {}",
                    e.run_id,
                    e.attempt,
                    if e.failed { "failed" } else { "passed" },
                    e.agent_id
                )
            })
            .collect();
        say!("    evidence: {}", runs.join(", "));
    }
}

pub async fn flaky(args: FlakyArgs) -> CliResult<i32> {
    let mut b = Backend::open(&args.query).await?;
    let tests = b.flaky(args.query.suite.clone()).await?;
    if args.query.json {
        print_json(&tests);
    } else {
        print_flaky(&tests);
    }
    Ok(exit_code::SUCCESS)
}

pub async fn timings(args: TimingsArgs) -> CliResult<i32> {
    let mut b = Backend::open(&args.query).await?;
    let t = b
        .timings(args.query.suite.clone(), args.top, args.slowdowns)
        .await?;
    if args.query.json {
        print_json(&t);
        return Ok(exit_code::SUCCESS);
    }
    say!(
        "{:<56} {:>7} {:>9} {:>9} {:>9}  SLOWDOWN",
        "TEST",
        "SAMPLES",
        "P50",
        "P95",
        "P99"
    );
    for x in &t.tests {
        let slow = x
            .slowdown
            .as_ref()
            .map(|s| format!("{} ms → {} ms", s.baseline_ms, s.recent_ms))
            .unwrap_or_default();
        say!(
            "{:<56} {:>7} {:>7}ms {:>7}ms {:>7}ms  {slow}",
            test_label(&x.test.binary_id, &x.test.name),
            x.samples,
            x.p50_ms,
            x.p95_ms,
            x.p99_ms
        );
    }
    for s in &t.suites {
        say!(
            "suite {}: {} tests, test p50 of {} / {} / {} ms (p50/p95/p99), one serial pass ≈ {:.1}s",
            s.suite,
            s.tests,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.total_p50_ms as f64 / 1000.0
        );
    }
    Ok(exit_code::SUCCESS)
}

pub async fn history(args: HistoryArgs) -> CliResult<i32> {
    let mut b = Backend::open(&args.query).await?;
    let found = b.history(args.test.clone()).await?;
    if args.query.json {
        print_json(&found);
        return Ok(exit_code::SUCCESS);
    }
    if found.is_empty() {
        return Err(CliError::Rejected(format!(
            "no test matching `{}` in history",
            args.test
        )));
    }
    for h in &found {
        say!(
            "{} ({})",
            test_label(&h.test.binary_id, &h.test.name),
            h.test.suite
        );
        say!(
            "  runs {}, attempts {}, failures {}, last outcome {}",
            h.runs,
            h.attempts,
            h.failures,
            h.last_outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let (Some(a), Some(b), Some(c)) = (h.p50_ms, h.p95_ms, h.p99_ms) {
            say!("  durations p50 {a} ms, p95 {b} ms, p99 {c} ms");
        }
        if let Some(f) = &h.flaky {
            say!(
                "  FLAKY on {} revision(s): failure probability {} [{}–{}], flip rate {:.2}",
                f.flaky_revisions,
                pct(f.failure_probability),
                pct(f.probability_low),
                pct(f.probability_high),
                f.flip_rate
            );
        }
        if let Some(q) = &h.quarantine {
            say!(
                "  QUARANTINED ({}, {}): {}; clean runs since: {}",
                q.by,
                ago(Some(q.since_ms)),
                q.reason,
                q.clean_streak
            );
        }
        for a in &h.log {
            let rev: String = a.revision.chars().take(10).collect();
            say!(
                "    run {:>5} #{} {:<10} {:>8} ms  rev {:<10} {}",
                a.run_id,
                a.attempt,
                format!("{:?}", a.status).to_lowercase(),
                a.duration_ms,
                rev,
                a.agent_id
            );
        }
    }
    Ok(exit_code::SUCCESS)
}

pub async fn runs(args: RunsArgs) -> CliResult<i32> {
    let mut b = Backend::open(&args.query).await?;
    let runs = b.runs(args.before.map(RunId), args.limit).await?;
    if args.query.json {
        print_json(&runs);
        return Ok(exit_code::SUCCESS);
    }
    say!(
        "{:>6}  {:<20} {:<10} {:<10} {:>6} {:>6} {:>6} {:>6} {:>9}",
        "RUN",
        "SUITE",
        "STATE",
        "REVISION",
        "PASS",
        "FAIL",
        "FLAKY",
        "TESTS",
        "WALL"
    );
    for r in &runs {
        let s = r.summary.clone().unwrap_or_default();
        say!(
            "{:>6}  {:<20} {:<10} {:<10} {:>6} {:>6} {:>6} {:>6} {:>8.1}s",
            r.run_id,
            r.suite,
            format!("{:?}", r.state).to_lowercase(),
            r.revision.chars().take(10).collect::<String>(),
            s.passed,
            s.failed + s.timed_out,
            s.flaky,
            r.total_tests,
            s.wall_ms as f64 / 1000.0
        );
    }
    Ok(exit_code::SUCCESS)
}

fn print_quarantine(entries: &[QuarantineInfo]) {
    if entries.is_empty() {
        say!("no quarantined tests");
    }
    for q in entries {
        say!(
            "{} ({}): {} by {}, {}; clean runs since: {}",
            test_label(&q.binary_id, &q.name),
            q.suite,
            q.reason,
            q.by,
            ago(Some(q.since_ms)),
            q.clean_streak
        );
    }
}

pub async fn quarantine(cmd: QuarantineCommand) -> CliResult<i32> {
    let (query, action): (&QueryArgs, QuarantineAction<'_>) = match &cmd {
        QuarantineCommand::Add {
            query,
            test,
            reason,
        } => (query, QuarantineAction::Add { test, reason }),
        QuarantineCommand::Remove { query, test } => (query, QuarantineAction::Remove { test }),
        QuarantineCommand::List { query } => (query, QuarantineAction::List),
    };
    let mut b = Backend::open(query).await?;
    let verb = match action {
        QuarantineAction::Add { .. } => "quarantined",
        QuarantineAction::Remove { .. } => "released",
        QuarantineAction::List => "",
    };
    let entries = b.quarantine(query.suite.clone(), action).await?;
    if query.json {
        print_json(&entries);
    } else if verb.is_empty() {
        print_quarantine(&entries);
    } else {
        for q in &entries {
            say!(
                "{verb}: {} ({})",
                test_label(&q.binary_id, &q.name),
                q.suite
            );
        }
    }
    Ok(exit_code::SUCCESS)
}
