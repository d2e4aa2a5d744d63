//! History and quarantine: the flaky ranking, timings, one test's history, quarantine changes,
//! and runs imported from other tools' reports.

use testfleet_proto::pb;
use tonic::{Request, Response, Status};

use super::super::blocking;
use super::{ClientApi, history_answer};
use testfleet_model::RunState;

use crate::history::{RunRecord, import, query};
use crate::limits::{Limit, exceeded};

pub(super) async fn flaky(
    api: &ClientApi,
    req: Request<pb::FlakyQuery>,
) -> Result<Response<pb::FlakyList>, Status> {
    let suite = Some(req.into_inner().suite).filter(|s| !s.is_empty());
    let written = api.history_written().await;
    let store = api.store.clone();
    let tests = blocking(move || query::flaky(store.as_ref(), suite.as_deref())).await?;
    let list = pb::FlakyList {
        tests: tests.iter().map(Into::into).collect(),
    };
    Ok(history_answer(list, written))
}

pub(super) async fn timings(
    api: &ClientApi,
    req: Request<pb::TimingsQuery>,
) -> Result<Response<pb::Timings>, Status> {
    let q = req.into_inner();
    let suite = Some(q.suite).filter(|s| !s.is_empty());
    let top = if q.top == 0 { 20 } else { q.top as usize };
    let written = api.history_written().await;
    let store = api.store.clone();
    let t =
        blocking(move || query::timings(store.as_ref(), suite.as_deref(), top, q.slowdowns_only))
            .await?;
    Ok(history_answer((&t).into(), written))
}

/// A run's failures as history explains them, once the history writer has written the run.
pub(super) async fn classify_failures(
    api: &ClientApi,
    req: Request<pb::ClassifyFailuresRequest>,
) -> Result<Response<pb::FailureClasses>, Status> {
    let req = req.into_inner();
    let run_id = super::parse_run_id(&req.run_id)?;
    let branch = req.default_branch;
    if branch.is_empty() {
        return Err(Status::invalid_argument("name the default branch"));
    }
    let written = api.history_written().await;
    let store = api.store.clone();
    let classes = blocking(move || {
        crate::history::failures::classify_failures(store.as_ref(), run_id, &branch)
    })
    .await?;
    let list = pb::FailureClasses {
        failures: classes.iter().map(Into::into).collect(),
    };
    Ok(history_answer(list, written))
}

pub(super) async fn test_history(
    api: &ClientApi,
    req: Request<pb::TestHistoryQuery>,
) -> Result<Response<pb::TestHistoryList>, Status> {
    let pattern = req.into_inner().pattern;
    if pattern.is_empty() {
        return Err(Status::invalid_argument(
            "name a test (a name, or `BINARY NAME`)",
        ));
    }
    let written = api.history_written().await;
    let store = api.store.clone();
    let tests = blocking(move || query::test_history(store.as_ref(), &pattern)).await?;
    let list = pb::TestHistoryList {
        tests: tests.iter().map(Into::into).collect(),
    };
    Ok(history_answer(list, written))
}

pub(super) async fn quarantine(
    api: &ClientApi,
    req: Request<pb::QuarantineRequest>,
) -> Result<Response<pb::QuarantineResponse>, Status> {
    use pb::quarantine_request::Action;
    let r = req.into_inner();
    let action = Action::try_from(r.action).unwrap_or(Action::Unspecified);
    let store = api.store.clone();
    let suite = Some(r.suite).filter(|s| !s.is_empty());
    // A change is made to what is on disk; only a listing can be behind the writer.
    let mut written = true;
    let entries = match action {
        Action::List => {
            written = api.history_written().await;
            blocking(move || query::quarantine_list(store.as_ref())).await?
        }
        Action::Add | Action::Remove => {
            let add = action == Action::Add;
            let (test, reason) = (r.test, r.reason);
            let done = blocking(move || {
                query::quarantine_change(
                    store.as_ref(),
                    suite.as_deref(),
                    &test,
                    add.then_some(reason.as_str()),
                )
            })
            .await?;
            done.map_err(Status::failed_precondition)?
        }
        Action::Unspecified => {
            return Err(Status::invalid_argument(
                "quarantine needs an action: list, add or remove",
            ));
        }
    };
    let response = pb::QuarantineResponse {
        entries: entries.iter().map(Into::into).collect(),
    };
    Ok(history_answer(response, written))
}

pub(super) async fn import(
    api: &ClientApi,
    req: Request<pb::ImportRunRequest>,
) -> Result<Response<pb::ImportRunResponse>, Status> {
    let r = req.into_inner();
    if r.suite.is_empty() {
        return Err(Status::invalid_argument(
            "an imported run needs a suite name",
        ));
    }
    if r.tests.len() > api.limits.max_tests_per_run {
        return Err(exceeded(
            Limit::TestsPerRun,
            format!(
                "the import has {} tests; this coordinator takes at most {} per run",
                r.tests.len(),
                api.limits.max_tests_per_run
            ),
        ));
    }
    let tests = r
        .tests
        .into_iter()
        .map(|t| {
            Ok(import::ImportedTest {
                binary_id: t.binary_id,
                name: t.name,
                attempts: t
                    .attempts
                    .into_iter()
                    .map(testfleet_model::AttemptResult::try_from)
                    .collect::<Result<_, _>>()?,
                skipped: t.skipped,
            })
        })
        .collect::<Result<Vec<_>, testfleet_proto::ConvertError>>()?;
    let store = api.store.clone();
    let run_id = blocking(move || store.next_run_id()).await?;
    let rec = RunRecord {
        run_id: run_id.0,
        suite: r.suite,
        total_tests: tests.len() as u32,
        revision: r.revision,
        branch: r.branch,
        created_unix_ms: crate::scheduler::now_unix_ms(),
        state: RunState::Running,
        summary: None,
        quarantine: Default::default(),
        resumes: 0,
    };
    let summary = import::import(&api.history, rec, &tests);
    tracing::info!(run = %run_id, tests = tests.len(), "imported a run");
    Ok(Response::new(pb::ImportRunResponse {
        run_id: run_id.to_string(),
        summary: Some((&summary).into()),
    }))
}
