//! Admitting a submitted run before the scheduler hears of it: the coordinator's limits, a place
//! under the concurrent-runs limit, its bundle present, and its record and spec on disk with a
//! plan from history. Refusals are a domain error, turned into a gRPC status in one place.

use std::sync::Arc;

use testfleet_model::{RunSpec, RunState};
use tonic::Status;

use crate::blobs::{BlobStore, BlobStoreError};
use crate::bundles::{BundleStore, BundleStoreError};
use crate::data_room::{DataRoom, NoRoom};
use crate::history::{HistoryStore, Plan, RunRecord, plan};
use crate::limits::{Limit, Limits, exceeded};
use crate::scheduler::RunSlot;
use crate::store_call::{StoreCallError, blocking};

/// Why a run was not admitted.
#[derive(Debug)]
pub(super) enum Refusal {
    TooManyTests { tests: usize, max: usize },
    OutputCap { asked: u64, max: u64 },
    Busy { max: usize },
    NoBundle(String),
    NoRoom(NoRoom),
    Bundles(BundleStoreError),
    Blobs(BlobStoreError),
    Store(StoreCallError),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TooManyTests { tests, max } => exceeded(
                Limit::TestsPerRun,
                format!("the run has {tests} tests; this coordinator takes at most {max} per run"),
            ),
            Refusal::OutputCap { asked, max } => exceeded(
                Limit::OutputBytes,
                format!(
                    "the run asks to keep {asked} bytes of output per test; this coordinator keeps at most {max}"
                ),
            ),
            Refusal::Busy { max } => exceeded(
                Limit::ConcurrentRuns,
                format!("{max} runs are running already; submit again when one has finished"),
            ),
            Refusal::NoBundle(d) => Status::failed_precondition(format!(
                "bundle {d} has not been uploaded to this coordinator"
            )),
            Refusal::NoRoom(no_room) => no_room_for("new runs", &no_room),
            Refusal::Bundles(e) => e.into(),
            Refusal::Blobs(e) => e.into(),
            Refusal::Store(e) => e.into(),
        }
    }
}

/// A run admitted: on disk, planned, holding its place.
pub(super) struct Admitted {
    pub spec: Arc<RunSpec>,
    pub record: RunRecord,
    pub plan: Plan,
    pub slot: RunSlot,
}

/// Checks `spec` against the coordinator's limits and bundles, takes its place, and writes its
/// record and spec (kept until the run finishes, so a restarted coordinator can resume it).
/// What admission checks a run against and writes it to.
pub(super) struct Gate<'a> {
    pub limits: &'a Limits,
    pub run_slots: &'a Arc<tokio::sync::Semaphore>,
    pub bundles: &'a BundleStore,
    pub blobs: &'a BlobStore,
    pub store: &'a Arc<dyn HistoryStore>,
    pub room: Option<&'a DataRoom>,
    pub names: &'a Arc<super::shared_names::SharedNames>,
}

/// The error for a request refused because the data dir is nearly full.
pub(super) fn no_room_for(what: &str, no_room: &NoRoom) -> Status {
    exceeded(
        Limit::DataDirRoom,
        format!("{no_room}: {what} are refused until there is room there (running runs go on)"),
    )
}

pub(super) async fn admit(gate: Gate<'_>, spec: RunSpec) -> Result<Admitted, Refusal> {
    let limits = gate.limits;
    if spec.tests.len() > limits.max_tests_per_run {
        return Err(Refusal::TooManyTests {
            tests: spec.tests.len(),
            max: limits.max_tests_per_run,
        });
    }
    if spec.output_cap_bytes > limits.max_output_bytes {
        return Err(Refusal::OutputCap {
            asked: spec.output_cap_bytes,
            max: limits.max_output_bytes,
        });
    }
    if let Some(room) = gate.room {
        room.check(0).map_err(Refusal::NoRoom)?;
    }
    let slot = gate
        .run_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Busy {
            max: limits.max_concurrent_runs,
        })?;
    if let Some(d) = &spec.bundle_digest
        && !gate.bundles.has(d).map_err(Refusal::Bundles)?
        && !gate.blobs.has_manifest(d).map_err(Refusal::Blobs)?
    {
        return Err(Refusal::NoBundle(d.clone()));
    }
    let store = gate.store.clone();
    let names = gate.names.clone();
    // The run's record and its spec are on disk before the submission is answered: the history
    // writer, which records everything after, may lag behind, and a coordinator killed meanwhile
    // must still find the run to resume.
    let (spec, record, plan) = blocking(move || {
        let mut spec = spec;
        names.share(&mut spec);
        let s = Arc::new(spec);
        names.remember(&s);
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
        let plan = plan(store.as_ref(), &s)?;
        Ok((s, record, plan))
    })
    .await
    .map_err(Refusal::Store)?;
    Ok(Admitted {
        spec,
        record,
        plan,
        slot,
    })
}
