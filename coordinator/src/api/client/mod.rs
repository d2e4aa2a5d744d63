//! The `Coordinator` service: what clients (the CLI, CI) call. The handlers are grouped by area
//! (`runs`: submitting, following and listing runs and agents; `queries`: history and quarantine);
//! bundles stream through `api::bundles`.

use std::pin::Pin;
use std::sync::Arc;

use testfleet_model::RunId;
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_server::Coordinator;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::BlobStore;
use crate::bundles::BundleStore;
use crate::data_room::DataRoom;
use crate::history::{HistoryStore, HistoryUpdate, RunRecord};
use crate::limits::Limits;
use crate::scheduler::{RunSnapshot, SchedulerHandle};

mod follow;
mod queries;
mod runs;

pub struct ClientApi {
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) history: tokio::sync::mpsc::UnboundedSender<HistoryUpdate>,
    pub(crate) bundles: BundleStore,
    /// Bundles of content-addressed files.
    pub(crate) blobs: BlobStore,
    pub(crate) limits: Limits,
    /// One permit per running run (the concurrent-runs limit).
    pub(crate) run_slots: Arc<tokio::sync::Semaphore>,
    /// Held while a submission with a run key looks the key up and creates its run, so that CI
    /// jobs submitting at once get one run between them.
    pub(crate) keyed_submits: tokio::sync::Mutex<()>,
    /// Free space on the data dir: below its minimum, what would write more is refused.
    pub(crate) room: Option<Arc<DataRoom>>,
    /// The last spec of each suite, whose test names the next one takes.
    pub(crate) shared_names: Arc<crate::api::shared_names::SharedNames>,
}

impl ClientApi {
    /// Waits (up to [`crate::history::QUERY_WAIT`]) until the writer has written everything sent
    /// before now; false if it has not.
    async fn history_written(&self) -> bool {
        crate::store_call::caught_up(&self.history, crate::history::QUERY_WAIT).await
    }

    /// Refuses `what` if writing `bytes` more would leave the data dir below its minimum.
    fn room_for(&self, what: &str, bytes: u64) -> Result<(), Status> {
        match &self.room {
            Some(room) => room
                .check(bytes)
                .map_err(|no_room| super::admission::no_room_for(what, &no_room)),
            None => Ok(()),
        }
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
        runs::submit(self, req).await
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<EventStream>, Status> {
        runs::watch(self, req).await
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        runs::cancel(self, req).await
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        runs::get(self, req).await
    }

    async fn get_run_tests(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunTests>, Status> {
        runs::tests(self, req).await
    }

    async fn classify_failures(
        &self,
        req: Request<pb::ClassifyFailuresRequest>,
    ) -> Result<Response<pb::FailureClasses>, Status> {
        queries::classify_failures(self, req).await
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        runs::list(self, req).await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        runs::agents(self, req).await
    }

    async fn has_bundle(
        &self,
        req: Request<pb::BundleRef>,
    ) -> Result<Response<pb::HasBundleResponse>, Status> {
        let digest = req.into_inner().digest;
        let present = self.bundles.has(&digest)? || self.blobs.has_manifest(&digest)?;
        Ok(Response::new(pb::HasBundleResponse { present }))
    }

    async fn upload_bundle(
        &self,
        req: Request<Streaming<pb::BundleChunk>>,
    ) -> Result<Response<pb::UploadBundleResponse>, Status> {
        super::bundles::receive(&self.bundles, req.into_inner(), |size| {
            self.room_for("bundle uploads", size)
        })
        .await
    }

    async fn find_missing_blobs(
        &self,
        req: Request<pb::FindMissingBlobsRequest>,
    ) -> Result<Response<pb::FindMissingBlobsResponse>, Status> {
        super::blobs::find_missing(&self.blobs, req.into_inner()).await
    }

    async fn upload_blob(
        &self,
        req: Request<Streaming<pb::BundleChunk>>,
    ) -> Result<Response<pb::UploadBlobResponse>, Status> {
        super::blobs::receive(&self.blobs, req.into_inner(), |size| {
            self.room_for("bundle uploads", size)
        })
        .await
    }

    async fn put_manifest(
        &self,
        req: Request<pb::PutManifestRequest>,
    ) -> Result<Response<pb::PutManifestResponse>, Status> {
        self.room_for("bundle uploads", 0)?;
        super::blobs::put_manifest(&self.blobs, req.into_inner()).await
    }

    async fn get_manifest(
        &self,
        req: Request<pb::BundleRef>,
    ) -> Result<Response<pb::ManifestData>, Status> {
        super::blobs::get_manifest(&self.blobs, req.into_inner().digest).await
    }

    type DownloadBlobStream = ChunkStream;

    async fn download_blob(
        &self,
        req: Request<pb::BlobDigest>,
    ) -> Result<Response<ChunkStream>, Status> {
        super::blobs::send(&self.blobs, req.into_inner()).await
    }

    async fn list_flaky(
        &self,
        req: Request<pb::FlakyQuery>,
    ) -> Result<Response<pb::FlakyList>, Status> {
        queries::flaky(self, req).await
    }

    async fn get_timings(
        &self,
        req: Request<pb::TimingsQuery>,
    ) -> Result<Response<pb::Timings>, Status> {
        queries::timings(self, req).await
    }

    async fn get_test_history(
        &self,
        req: Request<pb::TestHistoryQuery>,
    ) -> Result<Response<pb::TestHistoryList>, Status> {
        queries::test_history(self, req).await
    }

    async fn quarantine(
        &self,
        req: Request<pb::QuarantineRequest>,
    ) -> Result<Response<pb::QuarantineResponse>, Status> {
        self.room_for("quarantine changes", 0)?;
        queries::quarantine(self, req).await
    }

    async fn import_run(
        &self,
        req: Request<pb::ImportRunRequest>,
    ) -> Result<Response<pb::ImportRunResponse>, Status> {
        self.room_for("imported runs", 0)?;
        queries::import(self, req).await
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
