//! The coordinator's HTTP side on a real socket: probes, Prometheus metrics that match the runs'
//! results, and dashboard pages checked as HTML and as a headless browser renders them.

use std::collections::BTreeMap;

use testfleet_model::{EventKind, RunEvent, TestFinished, exit_code};

use crate::security::{AGENT, CLIENT, READER, assert_refused, coordinator_refusing, tokens_file};
use crate::support::*;
use crate::web::{self, browser_dom, browser_screenshot};

fn run_id(events: &[RunEvent]) -> String {
    events[0].run_id.to_string()
}

/// The value of one sample (`name` with exactly `labels`) in a scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected value {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

/// The table row of `name` in a page (`<tr class="test">` rows).
fn row<'a>(html: &'a str, class: &str, name: &str) -> &'a str {
    html.split("<tr")
        .filter(|r| r.starts_with(&format!(" class=\"{class}\"")))
        .find(|r| r.contains(&format!(">{name}</a>")))
        .unwrap_or_else(|| panic!("no {class} row for {name}"))
}

#[test]
fn probes_metrics_and_dashboard_show_what_the_runs_did() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url, http) = coordinator_with_http(dir.path(), &[]);
    wait_until("the coordinator is ready", || {
        web::get(&http, "/readyz", None).status == 200
    });
    assert_eq!(web::get(&http, "/healthz", None).body, "ok\n");
    let mut a1 = agent(dir.path(), &url, "agent-a", 1);
    let mut a2 = agent(dir.path(), &url, "agent-b", 1);
    wait_for_agents(&url, 2);
    let runs = [
        fixture_run_on(testfleet(), &url, &[]),
        fixture_run_on(testfleet(), &url, &[]),
    ];

    // Metrics: every counter equals what the runs' own events say.
    let metrics = web::get(&http, "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        metrics.headers
    );
    let scrape =
        prometheus_parse::Scrape::parse(metrics.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut outcomes: BTreeMap<&str, f64> = BTreeMap::new();
    let mut attempts: BTreeMap<&str, f64> = BTreeMap::new();
    for events in &runs {
        for o in final_outcomes(events).values() {
            *outcomes.entry(o.label()).or_default() += 1.0;
        }
        for e in events {
            if let EventKind::TestFinished(TestFinished {
                result,
                lease_id: Some(_),
                ..
            }) = &e.kind
            {
                *attempts.entry(result.status.label()).or_default() += 1.0;
            }
        }
    }
    for o in [
        "passed",
        "failed",
        "flaky",
        "timed_out",
        "skipped",
        "infra_error",
        "cancelled",
    ] {
        let expected = outcomes.get(o).copied().unwrap_or(0.0);
        assert_eq!(
            sample(&scrape, "testfleet_tests_total", &[("outcome", o)]),
            expected,
            "tests {o}"
        );
    }
    for (status, n) in &attempts {
        assert_eq!(
            sample(&scrape, "testfleet_attempts_total", &[("status", status)]),
            *n,
            "attempts {status}"
        );
    }
    assert_eq!(sample(&scrape, "testfleet_runs_started_total", &[]), 2.0);
    assert_eq!(
        sample(
            &scrape,
            "testfleet_runs_finished_total",
            &[("state", "finished")]
        ),
        2.0
    );
    assert_eq!(sample(&scrape, "testfleet_agents_connected", &[]), 2.0);
    assert_eq!(sample(&scrape, "testfleet_agent_slots", &[]), 2.0);
    assert_eq!(sample(&scrape, "testfleet_runs_running", &[]), 0.0);
    assert_eq!(sample(&scrape, "testfleet_queue_depth", &[]), 0.0);
    assert_eq!(sample(&scrape, "testfleet_leases_active", &[]), 0.0);
    assert!(sample(&scrape, "testfleet_leases_granted_total", &[]) >= 2.0);
    assert_eq!(
        sample(&scrape, "testfleet_lease_expirations_total", &[]),
        0.0
    );

    // Pages, as HTML.
    let ids: Vec<String> = runs.iter().map(|r| run_id(r)).collect();
    let home = web::get(&http, "/", None);
    assert_eq!(home.status, 200);
    for id in &ids {
        assert!(
            home.body.contains(&format!("href=\"/runs/{id}\"")),
            "{}",
            home.body
        );
    }
    assert!(home.body.contains("agent-a") && home.body.contains("agent-b"));
    let run_page = web::get(&http, &format!("/runs/{}", ids[1]), None).body;
    for ((_, name), outcome) in final_outcomes(&runs[1]) {
        let r = row(&run_page, "test", &name);
        assert!(
            r.contains(&format!("class=\"{0}\">{0}</span>", outcome.label())),
            "{name} should show {outcome}: {r}"
        );
    }
    let flaky_row = row(&run_page, "test", "tests::flaky_first_attempt");
    assert!(
        flaky_row.contains("1. <span class=\"failed\">failed</span>")
            && flaky_row.contains("2. <span class=\"passed\">passed</span>"),
        "{flaky_row}"
    );
    let flaky = web::get(&http, "/flaky", None).body;
    let ranked = row(&flaky, "flaky-test", "tests::flaky_first_attempt");
    assert!(
        ranked.contains(&format!("href=\"/runs/{}\"", ids[1])),
        "{ranked}"
    );
    assert!(!flaky.contains(">tests::adds</a>"), "{flaky}");
    let slowest = web::get(&http, "/slowest", None).body;
    assert!(
        slowest.contains("<svg") && slowest.contains("<rect"),
        "{slowest}"
    );
    let flaky_path = test_path(&runs[1], "tests::flaky_first_attempt");
    let test_page = web::get(&http, &flaky_path, None);
    assert_eq!(test_page.status, 200, "{}", test_page.body);
    // Two runs, a failure and a pass in each: four points, two of them red.
    assert_eq!(test_page.body.matches("<circle class=\"fail\"").count(), 2);
    assert_eq!(test_page.body.matches("<circle class=\"pass\"").count(), 2);
    assert_eq!(web::get(&http, "/runs/999", None).status, 404);

    // The same pages in a real browser: the DOM it built holds the runs, tests and charts.
    let profile = dir.path().join("browser");
    if let Some(dom) = browser_dom(&format!("{http}/"), &profile) {
        for id in &ids {
            assert!(dom.contains(&format!("/runs/{id}")), "{dom}");
        }
        let dom = browser_dom(&format!("{http}/runs/{}", ids[1]), &profile).unwrap();
        assert!(dom.contains("tests::flaky_first_attempt"), "{dom}");
        assert!(dom.contains("<svg") && dom.contains("<rect"), "{dom}");
        let dom = browser_dom(&format!("{http}/flaky"), &profile).unwrap();
        assert!(dom.contains("tests::flaky_first_attempt"), "{dom}");
        let dom = browser_dom(&format!("{http}{flaky_path}"), &profile).unwrap();
        assert_eq!(dom.matches("<circle class=\"fail\"").count(), 2, "{dom}");
        let png = dir.path().join("run.png");
        assert!(browser_screenshot(
            &format!("{http}/runs/{}", ids[1]),
            &profile,
            &png
        ));
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{}",
            bytes.len()
        );
        if let Ok(keep) = std::env::var("TESTFLEET_KEEP_SCREENSHOT") {
            std::fs::copy(&png, keep).unwrap();
        }
    }

    for p in [&mut a1, &mut a2, &mut coord] {
        assert!(p.stop().success(), "clean exit on SIGTERM:\n{}", p.log());
    }
}

/// The path of a test's page, its suite and binary as the run's events name them.
fn test_path(events: &[RunEvent], name: &str) -> String {
    let suite = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RunStarted { suite, .. } => Some(suite.clone()),
            _ => None,
        })
        .expect("the run started");
    let (binary, _) = final_outcomes(events)
        .into_keys()
        .find(|(_, n)| n == name)
        .expect("the test ran");
    let enc = |s: &str| s.replace(':', "%3A");
    format!(
        "/test?suite={}&binary={}&name={}",
        enc(&suite),
        enc(&binary),
        enc(name)
    )
}

#[test]
fn the_dashboard_and_metrics_need_a_reader_token_and_the_probes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let (_coord, url, http) =
        coordinator_with_http(dir.path(), &["--tokens-file", tokens.to_str().unwrap()]);
    let _ = url;
    wait_until("the coordinator is ready", || {
        web::get(&http, "/readyz", None).status == 200
    });
    assert_eq!(web::get(&http, "/healthz", None).status, 200);
    for path in ["/metrics", "/", "/flaky"] {
        let none = web::get(&http, path, None);
        assert_eq!(none.status, 401, "{path}");
        assert!(
            none.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic realm=\"testfleet\"")),
            "{:?}",
            none.headers
        );
        let wrong = web::get(&http, path, Some("Bearer not-a-token-of-this-coordinator"));
        assert_eq!(wrong.status, 401, "{path}");
        assert!(
            wrong.body.contains("not one this coordinator accepts"),
            "{}",
            wrong.body
        );
        let agent = web::get(&http, path, Some(&format!("Bearer {AGENT}")));
        assert_eq!(agent.status, 403, "{path}");
        assert!(
            agent.body.contains("token `fleet` has role agent"),
            "{}",
            agent.body
        );
        for token in [READER, CLIENT] {
            assert_eq!(
                web::get(&http, path, Some(&format!("Bearer {token}"))).status,
                200,
                "{path}"
            );
        }
        // What a browser sends once the user typed the token as the password.
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{READER}"));
        assert_eq!(
            web::get(&http, path, Some(&format!("Basic {basic}"))).status,
            200,
            "{path}"
        );
    }
    // Without tokens the HTTP side stays on loopback unless told otherwise.
    let out = coordinator_refusing(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"],
    );
    assert_refused(
        &out,
        exit_code::USAGE,
        "refusing to serve the dashboard and metrics on 0.0.0.0:0 without tokens",
    );
}

#[test]
fn the_runs_page_and_testfleet_runs_page_through_older_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url, http) = coordinator_with_http(dir.path(), &[]);
    let junit = dir.path().join("one.xml");
    std::fs::write(
        &junit,
        r#"<testsuite name="t"><testcase classname="a" name="b" time="0.001"/></testsuite>"#,
    )
    .unwrap();
    // One run more than a page holds (50).
    for _ in 0..51 {
        let out = run_output(
            testfleet()
                .args(["import", "junit", "--coordinator", &url])
                .arg(&junit),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let rows = |html: &str| html.matches("<tr class=\"run\">").count();
    // The runs page reads the history store, which the coordinator's writer fills a moment after
    // a run finishes: the last import's run may not be there yet when the command returns.
    wait_until("the 51st run reaches the history store", || {
        web::get(&http, "/", None).body.contains(">51</a>")
    });

    let first = web::get(&http, "/", None);
    assert_eq!(first.status, 200);
    assert_eq!(rows(&first.body), 50);
    assert!(
        first.body.contains(">51</a>"),
        "the newest run is on the first page"
    );
    assert!(!first.body.contains("id=\"newest\""));
    // Runs 51 down to 2 are shown: the next page is what came before run 2.
    assert!(
        first.body.contains("<a id=\"older\" href=\"/?before=2\">"),
        "{}",
        first.body
    );

    let second = web::get(&http, "/?before=2", None);
    assert_eq!(second.status, 200);
    assert_eq!(rows(&second.body), 1);
    assert!(second.body.contains("<a href=\"/runs/1\">1</a>"));
    assert!(second.body.contains("<a id=\"newest\" href=\"/\">"));
    assert!(!second.body.contains("id=\"older\""), "run 1 is the last");

    let beyond = web::get(&http, "/?before=1", None);
    assert!(beyond.body.contains("No older runs."), "{}", beyond.body);

    let page = |extra: &[&str]| -> Vec<u64> {
        let out = run_output(
            testfleet()
                .args(["runs", "--coordinator", &url, "--json", "--limit", "3"])
                .args(extra),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        runs.iter().map(|r| r["run_id"].as_u64().unwrap()).collect()
    };
    assert_eq!(page(&[]), [51, 50, 49]);
    assert_eq!(page(&["--before", "49"]), [48, 47, 46]);
    assert_eq!(page(&["--before", "2"]), [1]);
}
