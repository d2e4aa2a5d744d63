//! Bundle upload and download streams.

use std::pin::Pin;

use testfleet_proto::{BUNDLE_CHUNK_BYTES, pb};
use tokio::io::AsyncReadExt;
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status, Streaming};

use crate::bundles::{BundleStore, BundleStoreError};

pub(super) async fn receive(
    store: &BundleStore,
    mut chunks: Streaming<pb::BundleChunk>,
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
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleStoreError::NotFound(digest.to_owned()).into());
        }
        Err(e) => return Err(BundleStoreError::Io(e).into()),
    };
    let total_size = file.metadata().await.map_err(BundleStoreError::Io)?.len();
    let digest = digest.to_owned();
    tracing::info!(%digest, "bundle download started");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; BUNDLE_CHUNK_BYTES];
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("failed to read bundle: {e}"))))
                        .await;
                    break;
                }
            };
            buf.truncate(n);
            let chunk = pb::BundleChunk {
                digest: if first { digest.clone() } else { String::new() },
                total_size: if first { total_size } else { 0 },
                data: buf,
            };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}
