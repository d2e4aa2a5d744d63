//! Content-addressed bundles on the wire: which files the coordinator lacks, a file's upload and
//! download as one zstd frame in chunks (checked again as it is sent), and manifests. The store's
//! work (hashing, decompressing, the disk) runs on blocking threads.

use std::pin::Pin;

use std::io::Write;

use tokio::io::AsyncReadExt;

use testfleet_bundle::blob::{BlobDigest, VerifyingDecoder};
use testfleet_proto::{BUNDLE_CHUNK_BYTES, pb};
use tokio_stream::wrappers::ReceiverStream;
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
        Some(manifest) => {
            tracing::info!(%digest, "bundle manifest sent");
            Ok(Response::new(pb::ManifestData { manifest }))
        }
        None => Err(Status::not_found(format!(
            "bundle {digest} has no manifest on this coordinator"
        ))),
    }
}

/// Streams the stored file `digest` names, checking on the way that its frame still decodes to
/// what it names: a file damaged on disk ends the stream with `DATA_LOSS` (the agent throws away
/// what it got) and is removed, so that the next run's client uploads it again. The check holds a
/// blocking thread only while a chunk is decoded, not while a slow agent reads.
pub(super) async fn send(
    store: &BlobStore,
    digest: pb::BlobDigest,
) -> Result<Response<Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>>, Status> {
    let d = digest_from_wire(&digest)?;
    let path = store.path_of(&d);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Status::not_found(format!(
                "file {d} of a bundle is not on this coordinator (it was found damaged and removed, or \
                 its bundle was collected): the next run of the bundle uploads it again"
            )));
        }
        Err(e) => return Err(BlobStoreError::Io(e).into()),
    };
    let opened = file.metadata().await.map_err(BlobStoreError::Io)?;
    let mut check = Some(VerifyingDecoder::new(d, std::io::sink()).map_err(BlobStoreError::Io)?);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = store.clone();
    tokio::spawn(async move {
        let damaged = |why: String| store.remove_damaged(&d, &opened, &why).into();
        let mut first = true;
        loop {
            let mut data = vec![0u8; BUNDLE_CHUNK_BYTES];
            let n = match file.read(&mut data).await {
                Ok(n) => n,
                Err(e) => {
                    let status = Status::internal(format!("failed to read a bundle's file: {e}"));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            data.truncate(n);
            let mut c = check
                .take()
                .expect("the check is put back after each chunk");
            let last = n == 0;
            let checked = tokio::task::spawn_blocking(move || {
                if last {
                    c.finish().map(|_| None).map_err(|e| e.to_string())
                } else {
                    c.write_all(&data)
                        .map(|()| Some((c, data)))
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            let (c, data) = match checked {
                Ok(Ok(Some(next))) => next,
                Ok(Ok(None)) => return, // the whole frame was sent and checks out
                Ok(Err(why)) => {
                    let _ = tx.send(Err(damaged(why))).await;
                    return;
                }
                Err(e) => {
                    let status = Status::internal(format!("checking a bundle's file failed: {e}"));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            check = Some(c);
            let chunk = pb::BundleChunk {
                digest: if first {
                    digest.sha256.clone()
                } else {
                    String::new()
                },
                total_size: if first { d.size } else { 0 },
                data,
            };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() {
                return; // the agent went away
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
