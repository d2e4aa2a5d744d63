//! `testfleet import junit FILES`: other tools' results as a finished run in history, the local
//! data dir's or a coordinator's.

use std::sync::Arc;

use testfleet_coordinator::history::import::{self, ImportedTest};
use testfleet_coordinator::history::{RunRecord, spawn_writer};
use testfleet_coordinator::{HistoryStore, SledStore};
use testfleet_model::{RunState, RunSummary, exit_code};
use testfleet_proto::pb;

use crate::args::{ImportCommand, ImportJunitArgs};
use crate::error::{CliError, CliResult};

pub async fn run(cmd: ImportCommand) -> CliResult<i32> {
    match cmd {
        ImportCommand::Junit(args) => junit(args).await,
    }
}

async fn junit(args: ImportJunitArgs) -> CliResult<i32> {
    let files = args.files.clone();
    let tests = tokio::task::spawn_blocking(move || crate::junit_import::read(&files))
        .await
        .map_err(|e| CliError::Internal(e.into()))?
        .map_err(CliError::Config)?;
    if tests.is_empty() {
        return Err(CliError::Config(format!(
            "no <testcase> in {} file(s): nothing to import",
            args.files.len()
        )));
    }
    let suite = args.suite.clone();
    let revision = args.revision.clone().unwrap_or_default();
    let branch = args.branch.clone().unwrap_or_default();
    let (run_id, summary) = match &args.coordinator {
        Some(url) => {
            let mut client =
                crate::remote::connect(url, &args.connect.security()?, args.connect.wait()).await?;
            let reply = client
                .import_run(pb::ImportRunRequest {
                    suite: suite.clone(),
                    revision,
                    branch,
                    tests: tests.iter().map(to_wire).collect(),
                })
                .await
                .map_err(|s| CliError::from_status(url, s))?
                .into_inner();
            (
                reply.run_id,
                reply.summary.map(RunSummary::from).unwrap_or_default(),
            )
        }
        None => {
            let dir = crate::history_client::local_data_dir(
                args.data_dir.as_deref(),
                args.manifest_path.as_deref(),
            )?;
            let (s, t) = (suite.clone(), tests.clone());
            tokio::task::spawn_blocking(move || import_local(&dir, s, revision, branch, &t))
                .await
                .map_err(|e| CliError::Internal(e.into()))??
        }
    };
    let attempts: usize = tests.iter().map(|t| t.attempts.len()).sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"run_id": run_id, "suite": suite, "tests": tests.len(), "attempts": attempts, "summary": summary})
        );
    } else {
        println!(
            "imported run {run_id} of suite `{suite}`: {} tests, {attempts} attempts ({} passed, {} failed, {} flaky, {} timed out, {} skipped)",
            tests.len(),
            summary.passed,
            summary.failed,
            summary.flaky,
            summary.timed_out,
            summary.skipped
        );
    }
    Ok(exit_code::SUCCESS)
}

fn to_wire(t: &ImportedTest) -> pb::ImportedTest {
    pb::ImportedTest {
        binary_id: t.binary_id.clone(),
        name: t.name.clone(),
        attempts: t.attempts.iter().map(Into::into).collect(),
        skipped: t.skipped,
    }
}

/// Writes the run into the data dir's history through the same writer a coordinator uses.
fn import_local(
    dir: &std::path::Path,
    suite: String,
    revision: String,
    branch: String,
    tests: &[ImportedTest],
) -> CliResult<(String, RunSummary)> {
    // A data dir in use says so itself; other errors (a newer schema) are not about that.
    let store = SledStore::open(dir).map_err(|e| CliError::Server(e.to_string()))?;
    let store: Arc<dyn HistoryStore> = Arc::new(store);
    let run_id = store
        .next_run_id()
        .map_err(|e| CliError::Server(e.to_string()))?;
    let (tx, writer) = spawn_writer(store, None);
    let rec = RunRecord {
        run_id: run_id.0,
        suite,
        total_tests: tests.len() as u32,
        revision,
        branch,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        state: RunState::Running,
        summary: None,
        quarantine: Default::default(),
        resumes: 0,
    };
    let summary = import::import(&tx, rec, tests);
    drop(tx);
    writer
        .join()
        .map_err(|_| CliError::Internal(anyhow::anyhow!("the history writer failed")))?;
    Ok((run_id.to_string(), summary))
}
