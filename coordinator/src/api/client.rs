//! The `Coordinator` service: what clients (the CLI, CI) call.

use std::pin::Pin;
use std::sync::Arc;

use testfleet_model::{EventKind, RunEvent, RunId, RunSpec, RunState, TestId};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_server::Coordinator;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::blocking;
use crate::bundles::BundleStore;
use crate::history::{HistoryStore, HistoryUpdate, RunRecord, estimate_all};
use crate::scheduler::{Command, RunSnapshot, SchedulerHandle};

pub struct ClientApi {
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) history: tokio::sync::mpsc::UnboundedSender<HistoryUpdate>,
    pub(crate) bundles: BundleStore,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>;

fn parse_run_id(s: &str) -> Result<RunId, Status> {
    s.parse()
        .map_err(|e: testfleet_model::IdError| Status::invalid_argument(e.to_string()))
}

fn run_info(s: RunSnapshot) -> pb::RunInfo {
    pb::RunInfo {
        run_id: s.run_id.to_string(),
        suite: s.suite,
        state: pb::RunState::from(s.state) as i32,
        total_tests: s.total_tests,
        summary: Some((&s.summary).into()),
        created_unix_ms: s.created_unix_ms,
    }
}

fn record_info(r: RunRecord) -> pb::RunInfo {
    run_info(RunSnapshot {
        run_id: RunId(r.run_id),
        suite: r.suite,
        state: r.state,
        total_tests: r.total_tests,
        summary: r.summary.unwrap_or_default(),
        created_unix_ms: r.created_unix_ms,
    })
}

#[tonic::async_trait]
impl Coordinator for ClientApi {
    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let wire = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("invalid spec: missing"))?;
        let spec = RunSpec::try_from(wire)?;
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
        let (run_id, history) = blocking(move || {
            let ids: Vec<TestId> = (0..s.tests.len()).map(|i| s.test_id(i)).collect();
            Ok((
                store.next_run_id()?,
                store.passing_durations(&s.suite, &ids)?,
            ))
        })
        .await?;
        let binary_ids: Vec<&str> = spec
            .tests
            .iter()
            .map(|t| spec.binaries[t.binary as usize].binary_id.as_str())
            .collect();
        let estimates = estimate_all(&binary_ids, &history);
        let _ = self.history.send(HistoryUpdate::RunCreated(RunRecord {
            run_id: run_id.0,
            suite: spec.suite.clone(),
            total_tests: spec.tests.len() as u32,
            revision: spec.revision.clone(),
            branch: spec.branch.clone(),
            created_unix_ms: crate::scheduler::now_unix_ms(),
            state: RunState::Running,
            summary: None,
        }));
        self.scheduler
            .ask(|reply| Command::Submit {
                run_id,
                spec,
                estimates,
                reply,
            })
            .await?;
        tracing::info!(run = %run_id, "run submitted");
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: run_id.to_string(),
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
        let limit = match req.into_inner().limit {
            0 => 20,
            n => n.min(1000) as usize,
        };
        let store = self.store.clone();
        let runs = blocking(move || store.runs(limit)).await?;
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

    type DownloadBundleStream = ChunkStream;

    async fn download_bundle(
        &self,
        req: Request<pb::BundleRef>,
    ) -> Result<Response<ChunkStream>, Status> {
        super::bundles::send(&self.bundles, &req.into_inner().digest).await
    }
}
