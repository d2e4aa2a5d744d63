//! Runs and agents: submitting a run (or joining one by its key), following, cancelling and
//! listing runs, and the connected agents.

use testfleet_model::{EventKind, RunEvent, RunId, RunSpec, RunState};
use testfleet_proto::pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::super::admission::{self, Admitted};
use super::super::blocking;
use super::{ClientApi, EventStream, check_run_key, parse_run_id, record_info, run_info};
use crate::history::{HistoryUpdate, Plan};
use crate::scheduler::Command;

pub(super) async fn submit(
    api: &ClientApi,
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
        let guard = api.keyed_submits.lock().await;
        let store = api.store.clone();
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
    let needed = crate::scheduler::memory_of(&spec);
    api.scheduler
        .ask(|reply| Command::MakeRoom {
            bytes: needed,
            reply,
        })
        .await?
        .map_err(|refused| crate::limits::exceeded(crate::limits::Limit::RunsMemory, refused))?;
    let Admitted {
        spec,
        record,
        plan,
        slot,
    } = admission::admit(
        admission::Gate {
            limits: &api.limits,
            run_slots: &api.run_slots,
            bundles: &api.bundles,
            blobs: &api.blobs,
            store: &api.store,
            room: api.room.as_deref(),
            names: &api.shared_names,
        },
        spec,
    )
    .await?;
    let run_id = RunId(record.run_id);
    // The writer still hears of it: it takes the run's revision for the attempts' log entries
    // (and writes the same record again, which changes nothing).
    let _ = api
        .history
        .send(HistoryUpdate::RunCreated(Box::new(record)));
    let Plan {
        estimates,
        quarantined,
    } = plan;
    let trace = crate::run_trace::RunTrace::start(run_id, &spec.suite, spec.tests.len(), parent);
    api.scheduler
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
        let store = api.store.clone();
        let k = key.clone();
        blocking(move || store.put_run_key(&k, run_id)).await?;
    }
    tracing::info!(run = %run_id, key, by = caller.as_deref().unwrap_or("-"), "run submitted");
    Ok(Response::new(pb::SubmitRunResponse {
        run_id: run_id.to_string(),
        joined: false,
    }))
}

pub(super) async fn watch(
    api: &ClientApi,
    req: Request<pb::WatchRunRequest>,
) -> Result<Response<EventStream>, Status> {
    let req = req.into_inner();
    let run_id = parse_run_id(&req.run_id)?;
    let sub = api
        .scheduler
        .ask(|reply| Command::Watch {
            run_id,
            from_seq: req.from_seq,
            passing_output: !req.omit_passing_output,
            reply,
        })
        .await?;
    let events: EventStream = match sub {
        Some(sub) => {
            let follow = super::follow::Follow {
                run_id,
                store: api.store.clone(),
                history: api.history.clone(),
                scheduler: api.scheduler.clone(),
                passing_output: !req.omit_passing_output,
            };
            Box::pin(
                follow
                    .stream(req.from_seq, sub)
                    .map(|e| e.map(|e| pb::RunEvent::from(&e))),
            )
        }
        None => {
            // Not in memory: a run of an earlier coordinator process, or one evicted long ago.
            let store = api.store.clone();
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

pub(super) async fn cancel(
    api: &ClientApi,
    req: Request<pb::CancelRunRequest>,
) -> Result<Response<pb::CancelRunResponse>, Status> {
    let run_id = parse_run_id(&req.into_inner().run_id)?;
    match api
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

pub(super) async fn get(
    api: &ClientApi,
    req: Request<pb::GetRunRequest>,
) -> Result<Response<pb::RunInfo>, Status> {
    let run_id = parse_run_id(&req.into_inner().run_id)?;
    if let Some(s) = api
        .scheduler
        .ask(|reply| Command::GetRun { run_id, reply })
        .await?
    {
        return Ok(Response::new(run_info(s)));
    }
    let store = api.store.clone();
    blocking(move || store.run(run_id))
        .await?
        .map(|r| Response::new(record_info(r)))
        .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))
}

/// A run's tests and their outcomes from its history records, once the history writer has written
/// what it was sent (a run that just finished is there whole).
pub(super) async fn tests(
    api: &ClientApi,
    req: Request<pb::GetRunRequest>,
) -> Result<Response<pb::RunTests>, Status> {
    let run_id = parse_run_id(&req.into_inner().run_id)?;
    let written = api.history_written().await;
    let store = api.store.clone();
    let (record, tests) = blocking(move || {
        let Some(record) = store.run(run_id)? else {
            return Ok(None);
        };
        Ok(Some((record, store.run_tests(run_id)?)))
    })
    .await?
    .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
    let tests = tests
        .into_iter()
        .map(|t| pb::RunTest {
            binary_id: t.binary_id,
            name: t.name,
            outcome: t
                .outcome
                .map_or(pb::Outcome::Unspecified, pb::Outcome::from)
                .into(),
        })
        .collect();
    Ok(super::history_answer(
        pb::RunTests {
            run: Some(record_info(record)),
            tests,
        },
        written,
    ))
}

pub(super) async fn list(
    api: &ClientApi,
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
    let store = api.store.clone();
    let runs = blocking(move || store.runs(before, limit)).await?;
    Ok(Response::new(pb::ListRunsResponse {
        runs: runs.into_iter().map(record_info).collect(),
    }))
}

pub(super) async fn agents(
    api: &ClientApi,
    _: Request<pb::ListAgentsRequest>,
) -> Result<Response<pb::ListAgentsResponse>, Status> {
    let agents = api
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
                pulls: a.pulls.count,
                pull_ms: a.pulls.ms,
                pull_failures: a.pulls.failures,
                images: a.images,
            })
            .collect(),
    }))
}
