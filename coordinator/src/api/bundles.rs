//! Bundle upload and download streams.

use std::pin::Pin;

use testfleet_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status, Streaming};

use crate::bundles::{BundleStore, BundleStoreError};

/// Receives an upload; `room_for` refuses one the data dir has no room for (given its size).
pub(super) async fn receive(
    store: &BundleStore,
    mut chunks: Streaming<pb::BundleChunk>,
    room_for: impl FnOnce(u64) -> Result<(), Status>,
) -> Result<Response<pb::UploadBundleResponse>, Status> {
    let first = chunks.message().await?.ok_or_else(|| {
        Status::invalid_argument("empty upload: the first chunk must name the digest")
    })?;
    let digest = first.digest.clone();
    if store.has(&digest)? {
        tracing::info!(%digest, "bundle already present; upload discarded");
        return Ok(Response::new(pb::UploadBundleResponse {
            digest,
            stored: false,
        }));
    }
    room_for(first.total_size)?;
    let mut upload = store.begin_upload(&digest, first.total_size).await?;
    upload.write(&first.data).await?;
    while let Some(chunk) = chunks.next().await {
        upload.write(&chunk?.data).await?;
    }
    upload.finish().await?;
    tracing::info!(%digest, size = first.total_size, "bundle uploaded");
    Ok(Response::new(pb::UploadBundleResponse {
        digest,
        stored: true,
    }))
}

pub(super) async fn send(
    store: &BundleStore,
    digest: &str,
) -> Result<Response<Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>>, Status> {
    let path = store.path_of(digest)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleStoreError::NotFound(digest.to_owned()).into());
        }
        Err(e) => return Err(BundleStoreError::Io(e).into()),
    };
    let total_size = file.metadata().await.map_err(BundleStoreError::Io)?.len();
    tracing::info!(%digest, "bundle download started");
    let chunks = testfleet_proto::file_chunks(file, digest.to_owned(), total_size)
        .map(|c| c.map_err(|e| Status::internal(format!("failed to read bundle: {e}"))));
    Ok(Response::new(Box::pin(chunks)))
}
