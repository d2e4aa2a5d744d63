//! `testfleet ci`: one job of a parallel CI pipeline. All jobs share a run, found by the
//! pipeline's key; each works on it as an agent pinned to that run and exits with its status.

use std::sync::Arc;

use std::time::Duration;
use testfleet_agent::provision::{DockerProvisioner, Provisioner};
use testfleet_agent::{AgentConfig, Stop};

use testfleet_model::session::ONLY_RUN_LABEL;
use testfleet_model::{AgentId, RunId, RunSpec, exit_code};
use testfleet_proto::pb;

use crate::args::CiArgs;
use crate::error::{CliError, CliResult};
use crate::remote::{self, Client};
use crate::reporter::Report;
use crate::watch::StopSignals;

pub async fn run(args: Box<CiArgs>) -> CliResult<i32> {
    let CiArgs {
        run_key,
        node,
        nodes,
        work_dir,
        no_sandbox,
        attempt,
        run,
    } = *args;
    let attempt = attempt
        .or_else(|| std::env::var("GITHUB_RUN_ATTEMPT").ok()?.parse().ok())
        .unwrap_or(1);
    if attempt == 0 {
        return Err(CliError::Config(
            "--attempt 0: attempts are counted from 1".into(),
        ));
    }
    if node >= nodes {
        return Err(CliError::Config(format!(
            "--node {node} is not below --nodes {nodes} (nodes are counted from 0)"
        )));
    }
    if run_key.trim().is_empty() {
        return Err(CliError::Config(
            "--run-key is empty: give the pipeline's id, the same for all its jobs".into(),
        ));
    }
    if run.local.is_some() || run.detach || run.data_dir.is_some() || run.failed.is_some() {
        return Err(CliError::Config(
            "testfleet ci works on a coordinator's run: --local, --detach, --data-dir and --failed do not apply (a retried pipeline gives --attempt)"
                .into(),
        ));
    }
    let url = run.coordinator.clone().ok_or_else(|| {
        CliError::Config(
            "testfleet ci needs --coordinator URL (or TESTFLEET_COORDINATOR): the coordinator every job of the pipeline shares".into(),
        )
    })?;
    // Installed before anything is submitted: a job stopped meanwhile leaves cleanly.
    let mut signals = StopSignals::new();
    let security = run.connect.security()?;
    let mut client = remote::connect(&url, &security, run.connect.wait()).await?;
    // A job that comes after the run exists joins it without building anything.
    let key = attempt_key(&run_key, attempt);
    let (run_id, how) = match submit(&client, &url, &key, None, run.connect.wait()).await? {
        Some((id, _)) => (id, "joined"),
        None => {
            let mut prepared = crate::prepare::prepare(&run, Some((&url, &mut client))).await?;
            if attempt > 1
                && !only_not_passed(
                    &mut client,
                    &url,
                    &run_key,
                    attempt,
                    &mut prepared.spec,
                    run.connect.wait(),
                )
                .await?
            {
                return Ok(exit_code::SUCCESS);
            }
            match submit(
                &client,
                &url,
                &key,
                Some(&prepared.spec),
                run.connect.wait(),
            )
            .await?
            {
                Some((id, true)) => (id, "joined"),
                Some((id, false)) => (id, "created"),
                None => {
                    return Err(CliError::Internal(anyhow::anyhow!(
                        "the coordinator made no run of a submitted spec"
                    )));
                }
            }
        }
    };
    eprintln!(
        "node {node} of {nodes}: {how} run {run_id} (key `{run_key}`, attempt {attempt}) on {url}"
    );

    let agent_id = node_agent_id(&run_key, node)?;
    let mut config = AgentConfig::new(
        url.clone(),
        agent_id,
        run.slots
            .unwrap_or_else(crate::process::default_slots)
            .max(1),
        work_dir,
    );
    config.guard = crate::process::start_guard();
    config.security = security;
    config.sandbox =
        crate::process::sandbox_launcher(no_sandbox, &config.work_dir, &run.connect).await;
    config
        .labels
        .insert(ONLY_RUN_LABEL.to_owned(), run_id.0.to_string());
    config.labels.insert("ci.node".into(), node.to_string());
    let provisioner: Option<Arc<dyn Provisioner>> =
        (!run.no_docker).then(|| Arc::new(DockerProvisioner::new()) as Arc<dyn Provisioner>);
    let (stop, stopped) = tokio::sync::watch::channel(Stop::Running);
    let agent = tokio::spawn(testfleet_agent::run(config, provisioner, stopped));

    let mut report = Report::new(
        run.json,
        run.junit.clone(),
        format!("as node {node} of {nodes} on {url}"),
    )
    // A job that joined has no spec of its own: the suite's manifest says how its tool names tests.
    .with_case_names(crate::suite_manifest::tool_id_style(
        run.manifest.as_deref(),
    ))
    .with_markdown(run.markdown_summary.clone())
    // One job annotates the run's failures; every job doing it would show each one N times.
    .with_annotations((node == 0 && run.annotate()).then(|| annotation_base(&run)));
    let followed = tokio::select! {
        r = crate::watch::follow(&mut client, &url, run_id, &mut report, None) => Some(r),
        () = signals.recv() => None,
    };
    let Some(followed) = followed else {
        // The CI system stopped this job: the run goes on with the other jobs, and this job's
        // unfinished tests go back to them.
        report.note(&format!(
            "node {node} stopped: its unfinished tests go back to the other nodes of run {run_id}"
        ));
        let _ = stop.send(Stop::Now);
        let _ = agent.await;
        return Ok(exit_code::RUN_INCOMPLETE);
    };
    // Whatever the outcome, this job's agent leaves the fleet before the job ends.
    let _ = stop.send(Stop::Drain);
    let _ = agent.await;
    let (summary, _state) = followed?;
    if report.wants_failure_classes() && summary.exit_code() != 0 {
        let classes =
            crate::history_client::failure_classes(&mut client, &url, run_id, &run.default_branch)
                .await;
        report.set_failure_classes(classes.unwrap_or_default());
    }
    report.finish()?;
    Ok(summary.exit_code())
}

/// Where the suite's relative paths start, for a job that may not have built anything: the
/// directory of `--manifest-path`, else the current one (a job starts at the workspace's root).
fn annotation_base(run: &crate::args::RunArgs) -> std::path::PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    match run
        .cargo
        .manifest_path
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        Some(dir) if !dir.as_os_str().is_empty() => cwd.join(dir),
        _ => cwd,
    }
}

/// The key of a pipeline's attempt: the pipeline's own for the first (as before attempts were
/// counted), one per later attempt.
fn attempt_key(key: &str, attempt: u32) -> String {
    if attempt == 1 {
        key.to_owned()
    } else {
        format!("{key}#attempt-{attempt}")
    }
}

/// A later attempt of a pipeline: cuts the spec down to the tests no earlier attempt passed (a run
/// an earlier attempt left running, its jobs gone, is cancelled first, so its record is final).
/// False when every test passed already: the whole pipeline passed, and there is nothing to run.
async fn only_not_passed(
    client: &mut Client,
    url: &str,
    key: &str,
    attempt: u32,
    spec: &mut RunSpec,
    wait: Duration,
) -> CliResult<bool> {
    let mut passed = std::collections::HashSet::new();
    let mut earlier_runs = vec![];
    for n in 1..attempt {
        let Some((run_id, _)) = submit(client, url, &attempt_key(key, n), None, wait).await? else {
            continue;
        };
        let mut earlier = crate::rerun::tests_of(client, url, run_id).await?;
        if earlier.state == testfleet_model::RunState::Running {
            client
                .cancel_run(pb::CancelRunRequest {
                    run_id: run_id.to_string(),
                })
                .await
                .map_err(|s| CliError::from_status(url, s))?;
            earlier = crate::rerun::tests_of(client, url, run_id).await?;
        }
        passed.extend(earlier.passed);
        earlier_runs.push(run_id.to_string());
    }
    if earlier_runs.is_empty() {
        // No earlier attempt got as far as a run: this one runs everything.
        return Ok(true);
    }
    let keep: std::collections::HashSet<crate::rerun::TestKey> = spec
        .tests
        .iter()
        .map(|t| {
            let b = &spec.binaries[t.binary as usize].binary_id;
            (b.to_string(), t.name.to_string())
        })
        .filter(|k| !passed.contains(k))
        .collect();
    let left = crate::rerun::keep_only(spec, &keep);
    let runs = earlier_runs.join(", ");
    if left == 0 {
        eprintln!("attempt {attempt}: every test passed in run(s) {runs}; nothing to run again");
        return Ok(false);
    }
    eprintln!("attempt {attempt}: running the {left} test(s) that did not pass in run(s) {runs}");
    Ok(true)
}

/// Submits with the run key: the run it names (joined) or, with a spec, a new one. `None`: no run
/// has the key and no spec was given. Made again while the coordinator is unavailable (for up to
/// `wait`): the key makes a repeated submission join the run the first one created.
async fn submit(
    client: &Client,
    url: &str,
    key: &str,
    spec: Option<&RunSpec>,
    wait: Duration,
) -> CliResult<Option<(RunId, bool)>> {
    let span = tracing::info_span!(
        target: testfleet_coordinator::run_trace::TRACE_TARGET,
        "testfleet ci submit",
        otel.kind = "client",
        testfleet.run_key = key,
    );
    let wire: Option<pb::RunSpec> = spec.map(Into::into);
    let reply = remote::patiently(url, wait, || {
        let mut client = client.clone();
        let request = crate::remote::traced(
            &span,
            pb::SubmitRunRequest {
                spec: wire.clone(),
                run_key: key.to_owned(),
            },
        );
        async move { client.submit_run(request).await }
    })
    .await;
    let reply = match reply {
        Ok(r) => r.into_inner(),
        Err(s) if spec.is_none() && s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(CliError::from_status(url, s)),
    };
    let id = reply.run_id.parse().map_err(|e| {
        CliError::Internal(anyhow::anyhow!("coordinator returned a bad run id: {e}"))
    })?;
    Ok(Some((id, reply.joined)))
}

/// The agent's name: the same for a job and its retries (so a retried job's lost tests go back to
/// the queue at once), different across keys and nodes.
fn node_agent_id(key: &str, node: u32) -> CliResult<AgentId> {
    let plain: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    // Keys that read alike once made plain stay apart by a hash of the key itself.
    let h = crate::process::short_hash(key.as_bytes());
    format!("ci-{plain}-{h:08x}-node{node}")
        .parse()
        .map_err(|e| CliError::Internal(anyhow::anyhow!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::{attempt_key, node_agent_id};

    #[test]
    fn the_first_attempt_keeps_the_pipeline_s_key() {
        assert_eq!(attempt_key("1234", 1), "1234");
        assert_eq!(attempt_key("1234", 3), "1234#attempt-3");
    }

    #[test]
    fn node_names_are_stable_plain_and_distinct() {
        let a = node_agent_id("1234-1", 0).unwrap();
        assert_eq!(
            a,
            node_agent_id("1234-1", 0).unwrap(),
            "a retried job is the same agent"
        );
        assert_ne!(a, node_agent_id("1234-1", 1).unwrap());
        assert_ne!(a, node_agent_id("1234-2", 0).unwrap());
        // Keys that differ only in characters made plain still differ.
        assert_ne!(
            node_agent_id("a/b", 0).unwrap(),
            node_agent_id("a:b", 0).unwrap()
        );
        let long = node_agent_id(&"x".repeat(500), 7).unwrap();
        assert!(long.as_str().len() <= 128);
    }
}
