//! `testfleet run`: prepare the run (`crate::prepare`), submit it (to an embedded fleet or a
//! coordinator), follow it live, and end with the run's exit code.

use testfleet_model::{RunId, RunSpec};
use testfleet_proto::pb;

use crate::args::RunArgs;
use crate::error::{CliError, CliResult};
use crate::local::LocalFleet;
use crate::prepare::prepare;
use crate::remote::{self, traced};
use crate::reporter::Report;

pub async fn run(args: Box<RunArgs>) -> CliResult<i32> {
    // Fail fast on an unreachable coordinator, before spending minutes on a build.
    let mut remote_client = match &args.coordinator {
        Some(url) => {
            Some(remote::connect(url, &args.connect.security()?, args.connect.wait()).await?)
        }
        None => None,
    };
    let remote = args.coordinator.as_deref().zip(remote_client.as_mut());
    let prepared = prepare(&args, remote).await?;
    let mode;
    let mut fleet = None;
    let (url, mut client) = match (&args.coordinator, remote_client.take()) {
        (Some(url), Some(client)) => {
            mode = format!("on {url}");
            (url.clone(), client)
        }
        _ => {
            let agents = args.local.unwrap_or(2).max(1);
            let slots = args
                .slots
                .unwrap_or_else(|| (crate::process::default_slots() / agents).max(1));
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| prepared.workspace_root.join(".testfleet"));
            let docker = prepared.needs_services && !args.no_docker;
            let f = LocalFleet::start(&data_dir, agents, slots, docker).await?;
            mode = format!("on {agents} local agent(s) × {slots} slot(s)");
            let url = f.url.clone();
            // Up already: nothing to wait for.
            let client = remote::connect(&url, &f.security, std::time::Duration::ZERO).await?;
            fleet = Some(f);
            (url, client)
        }
    };

    let mut spec = prepared.spec;
    let base = prepared.workspace_root;
    let result = match &args.failed {
        Some(which) => match only_failed(&mut client, &url, &mut spec, which).await {
            Ok(true) => submit_and_follow(&mut client, &url, &spec, &args, mode, &base).await,
            Ok(false) => Ok(testfleet_model::exit_code::SUCCESS),
            Err(e) => Err(e),
        },
        None => submit_and_follow(&mut client, &url, &spec, &args, mode, &base).await,
    };
    if let Some(f) = fleet {
        f.shutdown().await;
    }
    result
}

/// `--failed [RUN]`: cuts the spec down to the tests that did not pass in run `which` (`last`:
/// the suite's last finished run). False when there is nothing to run again.
async fn only_failed(
    client: &mut remote::Client,
    url: &str,
    spec: &mut RunSpec,
    which: &str,
) -> CliResult<bool> {
    let run_id = match which {
        "last" => crate::rerun::last_of_suite(client, url, &spec.suite).await?,
        id => id
            .parse()
            .map_err(|e| CliError::Config(format!("--failed {id}: {e}")))?,
    };
    let earlier = crate::rerun::tests_of(client, url, run_id).await?;
    if earlier.suite != spec.suite {
        return Err(CliError::Config(format!(
            "run {run_id} is of suite `{}`, not of this one (`{}`)",
            earlier.suite, spec.suite
        )));
    }
    let named = earlier.not_passed.len();
    let left = crate::rerun::keep_only(spec, &earlier.not_passed);
    if left == 0 {
        eprintln!(
            "run {run_id} of {}: {}nothing to run again",
            spec.suite,
            if named == 0 {
                "every test passed, ".to_owned()
            } else {
                format!("the {named} test(s) that did not pass are no longer selected or built; ")
            }
        );
        return Ok(false);
    }
    let gone = named - left;
    eprintln!(
        "running again the {left} test(s) that did not pass in run {run_id}{}",
        if gone > 0 {
            format!(" ({gone} others are no longer selected or built)")
        } else {
            String::new()
        }
    );
    Ok(true)
}

async fn submit_and_follow(
    client: &mut remote::Client,
    url: &str,
    spec: &RunSpec,
    args: &RunArgs,
    mode: String,
    base: &std::path::Path,
) -> CliResult<i32> {
    let signals = crate::watch::StopSignals::new();
    // The root of the run's trace (when traces are on): the coordinator's run span continues it.
    let span = tracing::info_span!(
        target: testfleet_coordinator::run_trace::TRACE_TARGET,
        "testfleet run",
        otel.kind = "client",
        testfleet.suite = %spec.suite,
        testfleet.tests = spec.tests.len() as u64,
        testfleet.run_id = tracing::field::Empty,
    );
    let wire: pb::RunSpec = spec.into();
    let run_id: RunId = remote::patiently(url, args.connect.wait(), || {
        let mut client = client.clone();
        let request = traced(
            &span,
            pb::SubmitRunRequest {
                spec: Some(wire.clone()),
                ..Default::default()
            },
        );
        async move { client.submit_run(request).await }
    })
    .await
    .map_err(|s| CliError::from_status(url, s))?
    .into_inner()
    .run_id
    .parse()
    .map_err(|e| CliError::Internal(anyhow::anyhow!("coordinator returned a bad run id: {e}")))?;
    span.record("testfleet.run_id", run_id.to_string());
    if args.detach {
        // Machine-readable: the id alone on stdout.
        println!("{run_id}");
        eprintln!("run {run_id} submitted to {url}; it goes on without this process");
        return Ok(testfleet_model::exit_code::SUCCESS);
    }
    let mut report = Report::new(args.json, args.junit.clone(), mode)
        .with_case_names(spec.case_style())
        .with_markdown(args.markdown_summary.clone())
        .with_annotations(args.annotate().then(|| base.to_path_buf()));
    let (summary, _state) =
        crate::watch::follow(client, url, run_id, &mut report, Some(signals)).await?;
    if report.wants_failure_classes() && summary.exit_code() != 0 {
        let classes =
            crate::history_client::failure_classes(client, url, run_id, &args.default_branch).await;
        report.set_failure_classes(classes.unwrap_or_default());
    }
    report.finish()?;
    Ok(summary.exit_code())
}
