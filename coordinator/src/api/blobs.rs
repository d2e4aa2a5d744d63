//! Content-addressed bundles on the wire: which files the coordinator lacks, a file's upload and
//! download as one zstd frame in chunks, and manifests. The store's work (hashing, decompressing,
//! the disk) runs on blocking threads.

use std::pin::Pin;

use testfleet_bundle::blob::BlobDigest;
use testfleet_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status, Streaming};

use crate::blobs::{BlobStore, BlobStoreError};

/// Files asked about in one `FindMissingBlobs` at most (a bundle's entries' limit).
const FIND_MISSING_MAX: usize = 100_000;

/// A digest from the wire, checked.
pub(super) fn digest_from_wire(d: &pb::BlobDigest) -> Result<BlobDigest, Status> {
    let mut sha256 = [0u8; 32];
    let lowercase = d
        .sha256
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lowercase || hex::decode_to_slice(&d.sha256, &mut sha256).is_err() {
        return Err(Status::invalid_argument(format!(
            "`{}` is not a sha256 in lowercase hex",
            d.sha256.chars().take(80).collect::<String>()
        )));
    }
    Ok(BlobDigest {
        sha256,
        size: d.size,
    })
}

pub(super) fn digest_to_wire(d: &BlobDigest) -> pb::BlobDigest {
    pb::BlobDigest {
        sha256: d.sha256_hex(),
        size: d.size,
    }
}

/// Runs store work on a blocking thread.
async fn on_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobStoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("the bundle store's task failed: {e}")))?
        .map_err(Status::from)
}

pub(super) async fn find_missing(
    store: &BlobStore,
    req: pb::FindMissingBlobsRequest,
) -> Result<Response<pb::FindMissingBlobsResponse>, Status> {
    if req.blobs.len() > FIND_MISSING_MAX {
        return Err(Status::invalid_argument(format!(
            "{} files asked about at once; at most {FIND_MISSING_MAX}",
            req.blobs.len()
        )));
    }
    let digests = req
        .blobs
        .iter()
        .map(digest_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let store = store.clone();
    let missing = on_store(move || Ok(store.find_missing(&digests)?)).await?;
    Ok(Response::new(pb::FindMissingBlobsResponse {
        missing: missing.iter().map(digest_to_wire).collect(),
    }))
}

/// Receives one file; `room_for` refuses one the data dir has no room for (given its size).
pub(super) async fn receive(
    store: &BlobStore,
    mut chunks: Streaming<pb::BundleChunk>,
    room_for: impl FnOnce(u64) -> Result<(), Status>,
) -> Result<Response<pb::UploadBlobResponse>, Status> {
    let first = chunks.message().await?.ok_or_else(|| {
        Status::invalid_argument("empty upload: the first chunk must name the file's digest")
    })?;
    let digest = digest_from_wire(&pb::BlobDigest {
        sha256: first.digest.clone(),
        size: first.total_size,
    })?;
    room_for(digest.size)?;
    let s = store.clone();
    let mut upload = on_store(move || s.begin(digest)).await?;
    let mut data = first.data;
    loop {
        // A chunk at a time off the runtime: decompressing and hashing it is CPU work.
        upload = on_store(move || {
            upload.write(&data)?;
            Ok(upload)
        })
        .await?;
        match chunks.next().await {
            Some(chunk) => data = chunk?.data,
            None => break,
        }
    }
    on_store(move || upload.finish()).await?;
    tracing::debug!(file = %digest, "bundle file uploaded");
    Ok(Response::new(pb::UploadBlobResponse {}))
}

pub(super) async fn put_manifest(
    store: &BlobStore,
    req: pb::PutManifestRequest,
) -> Result<Response<pb::PutManifestResponse>, Status> {
    let store = store.clone();
    let digest = req.digest.clone();
    let missing = on_store(move || store.put_manifest(&req.digest, &req.manifest)).await?;
    if missing.is_empty() {
        tracing::info!(%digest, "bundle manifest stored");
    }
    Ok(Response::new(pb::PutManifestResponse {
        missing: missing.iter().map(digest_to_wire).collect(),
    }))
}

pub(super) async fn get_manifest(
    store: &BlobStore,
    digest: String,
) -> Result<Response<pb::ManifestData>, Status> {
    let store = store.clone();
    let d = digest.clone();
    match on_store(move || store.manifest(&d)).await? {
        Some(manifest) => Ok(Response::new(pb::ManifestData { manifest })),
        None => Err(Status::not_found(format!(
            "bundle {digest} has no manifest on this coordinator"
        ))),
    }
}

pub(super) async fn send(
    store: &BlobStore,
    digest: pb::BlobDigest,
) -> Result<Response<Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>>, Status> {
    let d = digest_from_wire(&digest)?;
    let path = store.path_of(&d);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Status::not_found(format!(
                "file {d} of a bundle is not on this coordinator"
            )));
        }
        Err(e) => return Err(BlobStoreError::Io(e).into()),
    };
    let chunks = testfleet_proto::file_chunks(file, digest.sha256, d.size)
        .map(|c| c.map_err(|e| Status::internal(format!("failed to read a bundle's file: {e}"))));
    Ok(Response::new(Box::pin(chunks)))
}
