//! The `Coordinator` service: what clients (the CLI, CI) call.

use std::pin::Pin;
use std::sync::Arc;

use testfleet_model::{EventKind, RunEvent, RunId, RunSpec, RunState};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_server::Coordinator;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::blocking;
use crate::bundles::BundleStore;
use crate::history::{HistoryStore, HistoryUpdate, Plan, RunRecord, import, plan, query};
use crate::limits::{Limit, Limits, exceeded};
use crate::scheduler::{Command, RunSnapshot, SchedulerHandle};

pub struct ClientApi {
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) history: tokio::sync::mpsc::UnboundedSender<HistoryUpdate>,
    pub(crate) bundles: BundleStore,
    pub(crate) limits: Limits,
    /// One permit per running run (the concurrent-runs limit).
    pub(crate) run_slots: Arc<tokio::sync::Semaphore>,
    /// Held while a submission with a run key looks the key up and creates its run, so that CI
    /// jobs submitting at once get one run between them.
    pub(crate) keyed_submits: tokio::sync::Mutex<()>,
}

impl ClientApi {
    /// Waits (up to [`crate::history::QUERY_WAIT`]) until the writer has written everything sent
    /// before now; false if it has not.
    async fn history_written(&self) -> bool {
        let written = crate::history::written(&self.history, crate::history::QUERY_WAIT).await;
        if !written {
            tracing::debug!("history query answered before the writer caught up");
        }
        written
    }
}

/// A history query's answer, marked if the writer was still behind (the client says so).
fn history_answer<T>(message: T, written: bool) -> Response<T> {
    let mut response = Response::new(message);
    if !written {
        response.metadata_mut().insert(
            testfleet_proto::HISTORY_BEHIND_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    response
}

/// Longest run key taken (CI systems' pipeline ids are far shorter).
const RUN_KEY_MAX: usize = 256;

fn check_run_key(key: &str) -> Result<(), Status> {
    if key.len() > RUN_KEY_MAX || key.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "a run key is at most {RUN_KEY_MAX} bytes of printable text"
        )));
    }
    Ok(())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>;

fn parse_run_id(s: &str) -> Result<RunId, Status> {
    s.parse()
        .map_err(|e: testfleet_model::IdError| Status::invalid_argument(e.to_string()))
}

fn run_info(s: RunSnapshot) -> pb::RunInfo {
    run_info_with(s, String::new(), String::new())
}

fn run_info_with(s: RunSnapshot, revision: String, branch: String) -> pb::RunInfo {
    pb::RunInfo {
        run_id: s.run_id.to_string(),
        suite: s.suite,
        state: pb::RunState::from(s.state) as i32,
        total_tests: s.total_tests,
        summary: Some((&s.summary).into()),
        created_unix_ms: s.created_unix_ms,
        revision,
        branch,
    }
}

fn record_info(r: RunRecord) -> pb::RunInfo {
    let (revision, branch) = (r.revision.clone(), r.branch.clone());
    run_info_with(
        RunSnapshot {
            run_id: RunId(r.run_id),
            suite: r.suite,
            state: r.state,
            total_tests: r.total_tests,
            summary: r.summary.unwrap_or_default(),
            created_unix_ms: r.created_unix_ms,
        },
        revision,
        branch,
    )
}

#[tonic::async_trait]
impl Coordinator for ClientApi {
    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let caller = req
            .extensions()
            .get::<testfleet_security::Caller>()
            .map(|c| c.name.clone());
        // The client's trace continues in the run's.
        let parent = testfleet_proto::trace::extract(req.metadata());
        let req = req.into_inner();
        let key = req.run_key;
        check_run_key(&key)?;
        let _keyed = if key.is_empty() {
            None
        } else {
            let guard = self.keyed_submits.lock().await;
            let store = self.store.clone();
            let k = key.clone();
            if let Some(run_id) = blocking(move || store.run_for_key(&k)).await? {
                tracing::info!(run = %run_id, key, by = caller.as_deref().unwrap_or("-"), "joined a run by its key");
                return Ok(Response::new(pb::SubmitRunResponse {
                    run_id: run_id.to_string(),
                    joined: true,
                }));
            }
            Some(guard)
        };
        let wire = req.spec.ok_or_else(|| {
            if key.is_empty() {
                Status::invalid_argument("invalid spec: missing")
            } else {
                Status::not_found(format!("no run has the key `{key}` yet"))
            }
        })?;
        let spec = RunSpec::try_from(wire)?;
        let limits = &self.limits;
        if spec.tests.len() > limits.max_tests_per_run {
            return Err(exceeded(
                Limit::TestsPerRun,
                format!(
                    "the run has {} tests; this coordinator takes at most {} per run",
                    spec.tests.len(),
                    limits.max_tests_per_run
                ),
            ));
        }
        if spec.output_cap_bytes > limits.max_output_bytes {
            return Err(exceeded(
                Limit::OutputBytes,
                format!(
                    "the run asks to keep {} bytes of output per test; this coordinator keeps at most {}",
                    spec.output_cap_bytes, limits.max_output_bytes
                ),
            ));
        }
        let slot = self.run_slots.clone().try_acquire_owned().map_err(|_| {
            exceeded(
                Limit::ConcurrentRuns,
                format!(
                    "{} runs are running already; submit again when one has finished",
                    limits.max_concurrent_runs
                ),
            )
        })?;
        if let Some(d) = &spec.bundle_digest
            && !self.bundles.has(d)?
        {
            return Err(Status::failed_precondition(format!(
                "bundle {d} has not been uploaded to this coordinator"
            )));
        }
        let spec = Arc::new(spec);
        let store = self.store.clone();
        let s = spec.clone();
        // The spec is kept until the run finishes, so a restarted coordinator can resume it. The
        // run's record and its spec are on disk before the submission is answered: the history
        // writer, which records everything after, may lag behind, and a coordinator killed
        // meanwhile must still find the run to resume.
        let (record, plan) = blocking(move || {
            let id = store.next_run_id()?;
            let record = RunRecord {
                run_id: id.0,
                suite: s.suite.clone(),
                total_tests: s.tests.len() as u32,
                revision: s.revision.clone(),
                branch: s.branch.clone(),
                created_unix_ms: crate::scheduler::now_unix_ms(),
                state: RunState::Running,
                summary: None,
                quarantine: s.quarantine,
                resumes: 0,
            };
            store.put_spec(id, &s)?;
            store.write(&mut |tx| tx.put_run(&record))?;
            store.flush()?;
            Ok((record, plan(store.as_ref(), &s)?))
        })
        .await?;
        let run_id = RunId(record.run_id);
        // The writer still hears of it: it takes the run's revision for the attempts' log entries
        // (and writes the same record again, which changes nothing).
        let _ = self.history.send(HistoryUpdate::RunCreated(record));
        let Plan {
            estimates,
            quarantined,
        } = plan;
        let trace =
            crate::run_trace::RunTrace::start(run_id, &spec.suite, spec.tests.len(), parent);
        self.scheduler
            .ask(|reply| Command::Submit {
                run_id,
                spec,
                estimates,
                quarantined,
                slot: Some(slot),
                trace,
                reply,
            })
            .await?;
        if !key.is_empty() {
            let store = self.store.clone();
            let k = key.clone();
            blocking(move || store.put_run_key(&k, run_id)).await?;
        }
        tracing::info!(run = %run_id, key, by = caller.as_deref().unwrap_or("-"), "run submitted");
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: run_id.to_string(),
            joined: false,
        }))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let run_id = parse_run_id(&req.run_id)?;
        let sub = self
            .scheduler
            .ask(|reply| Command::Watch {
                run_id,
                from_seq: req.from_seq,
                reply,
            })
            .await?;
        let events: EventStream = match sub {
            Some(sub) => {
                let backlog = tokio_stream::iter(sub.backlog);
                match sub.live {
                    Some(rx) => Box::pin(
                        backlog
                            .chain(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                            .map(|e| Ok(pb::RunEvent::from(&e))),
                    ),
                    None => Box::pin(backlog.map(|e| Ok(pb::RunEvent::from(&e)))),
                }
            }
            None => {
                // Not in memory: a run of an earlier coordinator process, or one evicted long ago.
                let store = self.store.clone();
                let rec = blocking(move || store.run(run_id))
                    .await?
                    .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
                if rec.state == RunState::Running {
                    // It was running when an earlier coordinator process stopped; nothing runs it now.
                    return Err(Status::failed_precondition(format!(
                        "run {run_id} was interrupted when its coordinator stopped and is not running"
                    )));
                }
                let finished = RunEvent {
                    seq: 0,
                    run_id,
                    at_unix_ms: rec.created_unix_ms,
                    kind: EventKind::RunFinished {
                        summary: rec.summary.unwrap_or_default(),
                        state: rec.state,
                    },
                };
                Box::pin(tokio_stream::once(Ok(pb::RunEvent::from(&finished))))
            }
        };
        Ok(Response::new(events))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let run_id = parse_run_id(&req.into_inner().run_id)?;
        match self
            .scheduler
            .ask(|reply| Command::Cancel { run_id, reply })
            .await?
        {
            Some(cancelled) => Ok(Response::new(pb::CancelRunResponse { cancelled })),
            None => Err(Status::not_found(format!(
                "run {run_id} is not active on this coordinator"
            ))),
        }
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let run_id = parse_run_id(&req.into_inner().run_id)?;
        if let Some(s) = self
            .scheduler
            .ask(|reply| Command::GetRun { run_id, reply })
            .await?
        {
            return Ok(Response::new(run_info(s)));
        }
        let store = self.store.clone();
        blocking(move || store.run(run_id))
            .await?
            .map(|r| Response::new(record_info(r)))
            .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let req = req.into_inner();
        let limit = match req.limit {
            0 => 20,
            n => n.min(1000) as usize,
        };
        let before = match req.before_run_id.as_str() {
            "" => None,
            id => Some(parse_run_id(id)?),
        };
        let store = self.store.clone();
        let runs = blocking(move || store.runs(before, limit)).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(record_info).collect(),
        }))
    }

    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self
            .scheduler
            .ask(|reply| Command::ListAgents { reply })
            .await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents
                .into_iter()
                .map(|a| pb::AgentInfo {
                    agent_id: a.agent_id.to_string(),
                    slots: a.slots,
                    busy: a.busy,
                    labels: a.labels,
                    docker_available: a.docker_available,
                    version: a.version,
                    docker_status: a.docker_status,
                    sandbox_status: a.sandbox_status,
                })
                .collect(),
        }))
    }

    async fn has_bundle(
        &self,
        req: Request<pb::BundleRef>,
    ) -> Result<Response<pb::HasBundleResponse>, Status> {
        let present = self.bundles.has(&req.into_inner().digest)?;
        Ok(Response::new(pb::HasBundleResponse { present }))
    }

    async fn upload_bundle(
        &self,
        req: Request<Streaming<pb::BundleChunk>>,
    ) -> Result<Response<pb::UploadBundleResponse>, Status> {
        super::bundles::receive(&self.bundles, req.into_inner()).await
    }

    async fn list_flaky(
        &self,
        req: Request<pb::FlakyQuery>,
    ) -> Result<Response<pb::FlakyList>, Status> {
        let suite = Some(req.into_inner().suite).filter(|s| !s.is_empty());
        let written = self.history_written().await;
        let store = self.store.clone();
        let tests = blocking(move || query::flaky(store.as_ref(), suite.as_deref())).await?;
        let list = pb::FlakyList {
            tests: tests.iter().map(Into::into).collect(),
        };
        Ok(history_answer(list, written))
    }

    async fn get_timings(
        &self,
        req: Request<pb::TimingsQuery>,
    ) -> Result<Response<pb::Timings>, Status> {
        let q = req.into_inner();
        let suite = Some(q.suite).filter(|s| !s.is_empty());
        let top = if q.top == 0 { 20 } else { q.top as usize };
        let written = self.history_written().await;
        let store = self.store.clone();
        let t = blocking(move || {
            query::timings(store.as_ref(), suite.as_deref(), top, q.slowdowns_only)
        })
        .await?;
        Ok(history_answer((&t).into(), written))
    }

    async fn get_test_history(
        &self,
        req: Request<pb::TestHistoryQuery>,
    ) -> Result<Response<pb::TestHistoryList>, Status> {
        let pattern = req.into_inner().pattern;
        if pattern.is_empty() {
            return Err(Status::invalid_argument(
                "name a test (a name, or `BINARY NAME`)",
            ));
        }
        let written = self.history_written().await;
        let store = self.store.clone();
        let tests = blocking(move || query::test_history(store.as_ref(), &pattern)).await?;
        let list = pb::TestHistoryList {
            tests: tests.iter().map(Into::into).collect(),
        };
        Ok(history_answer(list, written))
    }

    async fn quarantine(
        &self,
        req: Request<pb::QuarantineRequest>,
    ) -> Result<Response<pb::QuarantineResponse>, Status> {
        use pb::quarantine_request::Action;
        let r = req.into_inner();
        let action = Action::try_from(r.action).unwrap_or(Action::Unspecified);
        let store = self.store.clone();
        let suite = Some(r.suite).filter(|s| !s.is_empty());
        // A change is made to what is on disk; only a listing can be behind the writer.
        let mut written = true;
        let entries = match action {
            Action::List => {
                written = self.history_written().await;
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

    async fn import_run(
        &self,
        req: Request<pb::ImportRunRequest>,
    ) -> Result<Response<pb::ImportRunResponse>, Status> {
        let r = req.into_inner();
        if r.suite.is_empty() {
            return Err(Status::invalid_argument(
                "an imported run needs a suite name",
            ));
        }
        if r.tests.len() > self.limits.max_tests_per_run {
            return Err(exceeded(
                Limit::TestsPerRun,
                format!(
                    "the import has {} tests; this coordinator takes at most {} per run",
                    r.tests.len(),
                    self.limits.max_tests_per_run
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
        let store = self.store.clone();
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
        let summary = import::import(&self.history, rec, &tests);
        tracing::info!(run = %run_id, tests = tests.len(), "imported a run");
        Ok(Response::new(pb::ImportRunResponse {
            run_id: run_id.to_string(),
            summary: Some((&summary).into()),
        }))
    }

    type DownloadBundleStream = ChunkStream;

    async fn download_bundle(
        &self,
        req: Request<pb::BundleRef>,
    ) -> Result<Response<ChunkStream>, Status> {
        super::bundles::send(&self.bundles, &req.into_inner().digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_given_before_the_writer_caught_up_is_marked() {
        let header = testfleet_proto::HISTORY_BEHIND_HEADER;
        let behind = history_answer(pb::FlakyList::default(), false);
        assert!(behind.metadata().contains_key(header));
        let current = history_answer(pb::FlakyList::default(), true);
        assert!(!current.metadata().contains_key(header));
    }
}
