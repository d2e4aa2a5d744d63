//! Where history queries go: a coordinator over gRPC (`--coordinator`), or the local data dir that
//! `testfleet run --local` writes, opened directly. Both answer with the same report types.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use testfleet_coordinator::history::query;
use testfleet_coordinator::{HistoryStore, SledStore};
use testfleet_model::report::{FlakyTest, QuarantineInfo, RunOverview, TestHistory, Timings};
use testfleet_model::{RunId, RunState};
use testfleet_proto::pb;

use crate::args::{CargoArgs, QueryArgs};
use crate::error::{CliError, CliResult};
use crate::remote::{self, Client};

/// What history says of run `run_id`'s failures, for its summary; `None` (with a note) when the
/// coordinator cannot say (an older one, or an error): the summary then goes without.
pub async fn failure_classes(
    client: &mut Client,
    url: &str,
    run_id: RunId,
    default_branch: &str,
) -> Option<Vec<testfleet_model::report::FailureClass>> {
    let reply = client
        .classify_failures(pb::ClassifyFailuresRequest {
            run_id: run_id.to_string(),
            default_branch: default_branch.to_owned(),
        })
        .await;
    match reply {
        Ok(r) => Some(
            answered(url, r)
                .failures
                .into_iter()
                .filter_map(|c| c.try_into().ok())
                .collect(),
        ),
        Err(s) => {
            eprintln!(
                "note: the summary does not say which failures are new: {}",
                s.message()
            );
            None
        }
    }
}

pub enum Backend {
    Local(Arc<SledStore>),
    Remote { client: Box<Client>, url: String },
}

pub enum QuarantineAction<'a> {
    List,
    Add { test: &'a str, reason: &'a str },
    Remove { test: &'a str },
}

fn history_error(e: testfleet_coordinator::history::HistoryError) -> CliError {
    CliError::Server(e.to_string())
}

/// The local data dir: `--data-dir`, or `.testfleet` beside the tool suite's `testfleet.toml` here
/// (where `testfleet run` keeps it), or in the Cargo workspace around us.
pub(crate) fn local_data_dir(
    data_dir: Option<&Path>,
    manifest_path: Option<&Path>,
) -> CliResult<PathBuf> {
    if let Some(d) = data_dir {
        return Ok(d.to_path_buf());
    }
    if manifest_path.is_none()
        && let Some(suite) = crate::suite_manifest::load_tool_suite(None)?
    {
        return Ok(suite.dir.join(".testfleet"));
    }
    let cargo = CargoArgs {
        manifest_path: manifest_path.map(Path::to_path_buf),
        ..CargoArgs::default()
    };
    let ws = crate::cargo::locate_workspace(&cargo).map_err(|e| {
        CliError::NotACargoProject(format!(
            "{e}\nhistory lives in the `.testfleet` dir of a workspace or of a tool suite (beside its testfleet.toml): run this there, or give --data-dir or --coordinator"
        ))
    })?;
    Ok(ws.root.join(".testfleet"))
}

/// A history query's answer. When the coordinator answered before its history writer caught up
/// (a large backlog of results), says so on stderr: the figures may miss the latest runs.
fn answered<T>(url: &str, response: tonic::Response<T>) -> T {
    if let Some(note) = behind_note(url, response.metadata()) {
        eprintln!("{note}");
    }
    response.into_inner()
}

fn behind_note(url: &str, metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .contains_key(testfleet_proto::HISTORY_BEHIND_HEADER)
        .then(|| {
            format!(
                "note: {url} is still writing the history of recent results; this answer may not include the latest of them"
            )
        })
}

impl Backend {
    pub async fn open(args: &QueryArgs) -> CliResult<Self> {
        if let Some(url) = &args.coordinator {
            return Ok(Backend::Remote {
                client: Box::new(
                    remote::connect(url, &args.connect.security()?, args.connect.wait()).await?,
                ),
                url: url.clone(),
            });
        }
        let dir = local_data_dir(args.data_dir.as_deref(), args.manifest_path.as_deref())?;
        if !dir.join("history").exists() {
            return Err(CliError::Server(format!(
                "no history in {}: run `testfleet run` there first, or give --coordinator",
                dir.display()
            )));
        }
        let d = dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&d))
            .await
            .map_err(|e| CliError::Internal(e.into()))?
            // A data dir in use says so itself; other errors (a newer schema) are not about that.
            .map_err(|e| CliError::Server(e.to_string()))?;
        Ok(Backend::Local(Arc::new(store)))
    }

    async fn local<T: Send + 'static>(
        store: &Arc<SledStore>,
        f: impl FnOnce(&dyn HistoryStore) -> Result<T, testfleet_coordinator::history::HistoryError>
        + Send
        + 'static,
    ) -> CliResult<T> {
        let store = store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| CliError::Internal(e.into()))?
            .map_err(history_error)
    }

    pub async fn flaky(&mut self, suite: Option<String>) -> CliResult<Vec<FlakyTest>> {
        match self {
            Backend::Local(s) => Self::local(s, move |st| query::flaky(st, suite.as_deref())).await,
            Backend::Remote { client, url } => Ok(client
                .list_flaky(pb::FlakyQuery {
                    suite: suite.unwrap_or_default(),
                })
                .await
                .map(|r| answered(url, r))
                .map_err(|s| CliError::from_status(url, s))?
                .tests
                .into_iter()
                .map(Into::into)
                .collect()),
        }
    }

    pub async fn timings(
        &mut self,
        suite: Option<String>,
        top: usize,
        slowdowns: bool,
    ) -> CliResult<Timings> {
        match self {
            Backend::Local(s) => {
                Self::local(s, move |st| {
                    query::timings(st, suite.as_deref(), top, slowdowns)
                })
                .await
            }
            Backend::Remote { client, url } => Ok(client
                .get_timings(pb::TimingsQuery {
                    suite: suite.unwrap_or_default(),
                    top: top as u32,
                    slowdowns_only: slowdowns,
                })
                .await
                .map(|r| answered(url, r))
                .map_err(|s| CliError::from_status(url, s))?
                .into()),
        }
    }

    pub async fn history(&mut self, pattern: String) -> CliResult<Vec<TestHistory>> {
        match self {
            Backend::Local(s) => Self::local(s, move |st| query::test_history(st, &pattern)).await,
            Backend::Remote { client, url } => client
                .get_test_history(pb::TestHistoryQuery { pattern })
                .await
                .map(|r| answered(url, r))
                .map_err(|s| CliError::from_status(url, s))?
                .tests
                .into_iter()
                .map(|t| TestHistory::try_from(t).map_err(|e| CliError::Internal(e.into())))
                .collect(),
        }
    }

    /// Newest first; with `before`, the runs older than it.
    pub async fn runs(
        &mut self,
        before: Option<RunId>,
        limit: usize,
    ) -> CliResult<Vec<RunOverview>> {
        match self {
            Backend::Local(s) => {
                Self::local(s, move |st| {
                    Ok(st
                        .runs(before, limit)?
                        .into_iter()
                        .map(query::run_overview)
                        .collect())
                })
                .await
            }
            Backend::Remote { client, url } => client
                .list_runs(pb::ListRunsRequest {
                    limit: limit as u32,
                    before_run_id: before.map(|b| b.to_string()).unwrap_or_default(),
                })
                .await
                .map_err(|s| CliError::from_status(url, s))?
                .into_inner()
                .runs
                .into_iter()
                .map(|r| {
                    Ok(RunOverview {
                        run_id: r
                            .run_id
                            .parse::<RunId>()
                            .map_err(|e| CliError::Internal(e.into()))?
                            .0,
                        suite: r.suite,
                        revision: r.revision,
                        branch: r.branch,
                        created_unix_ms: r.created_unix_ms,
                        state: testfleet_proto::run_state_from_wire(r.state)
                            .unwrap_or(RunState::Running),
                        total_tests: r.total_tests,
                        summary: r.summary.map(Into::into),
                    })
                })
                .collect(),
        }
    }

    pub async fn quarantine(
        &mut self,
        suite: Option<String>,
        action: QuarantineAction<'_>,
    ) -> CliResult<Vec<QuarantineInfo>> {
        match self {
            Backend::Local(s) => {
                let (kind, test, reason) = match action {
                    QuarantineAction::List => (0, String::new(), String::new()),
                    QuarantineAction::Add { test, reason } => {
                        (1, test.to_owned(), reason.to_owned())
                    }
                    QuarantineAction::Remove { test } => (2, test.to_owned(), String::new()),
                };
                let answer = Self::local(s, move |st| {
                    Ok(match kind {
                        0 => Ok(query::quarantine_list(st)?),
                        1 => query::quarantine_change(st, suite.as_deref(), &test, Some(&reason))?,
                        _ => query::quarantine_change(st, suite.as_deref(), &test, None)?,
                    })
                })
                .await?;
                answer.map_err(CliError::Rejected)
            }
            Backend::Remote { client, url } => {
                use pb::quarantine_request::Action;
                let (a, test, reason) = match action {
                    QuarantineAction::List => (Action::List, "", ""),
                    QuarantineAction::Add { test, reason } => (Action::Add, test, reason),
                    QuarantineAction::Remove { test } => (Action::Remove, test, ""),
                };
                Ok(client
                    .quarantine(pb::QuarantineRequest {
                        action: a as i32,
                        test: test.to_owned(),
                        suite: suite.unwrap_or_default(),
                        reason: reason.to_owned(),
                    })
                    .await
                    .map(|r| answered(url, r))
                    .map_err(|s| CliError::from_status(url, s))?
                    .entries
                    .into_iter()
                    .map(Into::into)
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_answer_gets_a_note_naming_the_coordinator() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(behind_note("http://c:7070", &metadata), None);
        metadata.insert(
            testfleet_proto::HISTORY_BEHIND_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let note = behind_note("http://c:7070", &metadata).unwrap();
        assert!(
            note.contains("http://c:7070") && note.contains("still writing"),
            "{note}"
        );
    }
}
