//! Fetching a bundle of content-addressed files: its manifest (checked against the digest that
//! names the bundle, and parsed within the extraction limits), the files the agent's cache lacks
//! (each checked as it arrives), a check of the cached files it reuses (one found damaged is
//! fetched again), and the layout of the whole into a staging directory.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use testfleet_bundle::blob::BlobDigest;
use testfleet_bundle::layout::{LayoutStats, LinkMode};
use testfleet_bundle::manifest::{Manifest, ManifestLimits};
use testfleet_bundle::{BundleError, ExtractLimits};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_security::AuthChannel;
use tokio::task::JoinSet;

use crate::bundle_error::CacheError;
use crate::bundle_files::FileCache;

/// Files downloaded at once: enough to hide round trips for bundles of many small files.
const DOWNLOADS_AT_ONCE: usize = 8;

/// What laying a bundle out took.
#[derive(Debug, Default)]
pub struct Fetched {
    pub files: usize,
    /// Files downloaded (cached ones found damaged included), their sizes, and the bytes received.
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    pub received_bytes: u64,
    pub layout: LayoutStats,
}

type Client = CoordinatorClient<AuthChannel>;

/// Lays bundle `digest` out under `staging` (which must not exist) from its manifest; `Ok(None)`
/// when the coordinator has no manifest for it (an archive bundle, or an older coordinator).
pub async fn fetch(
    digest: &str,
    client: &Client,
    files: &FileCache,
    staging: &Path,
    mode: LinkMode,
) -> Result<Option<Fetched>, CacheError> {
    let bytes = match client
        .clone()
        .get_manifest(pb::BundleRef {
            digest: digest.to_owned(),
        })
        .await
    {
        Ok(reply) => reply.into_inner().manifest,
        Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {
            return Ok(None);
        }
        Err(s) => return Err(download_error(digest, &s)),
    };
    let unusable = |source| CacheError::Bundle {
        digest: digest.to_owned(),
        source,
    };
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != digest {
        return Err(unusable(BundleError::DigestMismatch {
            expected: digest.to_owned(),
            actual: format!("a manifest hashing to {actual}"),
        }));
    }
    let manifest = Manifest::parse(&bytes, &ManifestLimits::from(ExtractLimits::default()))
        .map_err(unusable)?;

    // Each file once, in the mode the bundle wants (the cache keeps each mode apart).
    let mut wanted: Vec<(BlobDigest, bool)> = manifest
        .entries()
        .iter()
        .filter(|e| e.size > 0)
        .map(|e| {
            let d = BlobDigest {
                sha256: e.sha256,
                size: e.size,
            };
            (d, e.executable)
        })
        .collect();
    wanted.sort_unstable_by_key(|(d, x)| (d.sha256, d.size, *x));
    wanted.dedup();
    let cache = files.clone();
    let missing = tokio::task::spawn_blocking(move || check_cached(&cache, wanted))
        .await
        .expect("the cache check does not panic");
    let mut fetched = Fetched {
        files: manifest.entries().len(),
        ..Fetched::default()
    };
    download_all(digest, client, files, &missing, &mut fetched).await?;

    let (files, staging) = (files.clone(), staging.to_path_buf());
    fetched.layout = tokio::task::spawn_blocking(move || {
        std::fs::create_dir(&staging).map_err(BundleError::io("failed to create", &staging))?;
        testfleet_bundle::layout::layout(
            &manifest,
            |e| {
                let d = BlobDigest {
                    sha256: e.sha256,
                    size: e.size,
                };
                files.path_of(&d, e.executable)
            },
            &staging,
            mode,
        )
    })
    .await
    .expect("the layout does not panic")
    .map_err(unusable)?;
    Ok(Some(fetched))
}

/// The files of `wanted` the cache does not hold intact: those it lacks, and those whose
/// contents no longer hash to their digest (removed, to be fetched again).
fn check_cached(cache: &FileCache, wanted: Vec<(BlobDigest, bool)>) -> Vec<(BlobDigest, bool)> {
    let mut missing = Vec::new();
    for (d, executable) in wanted {
        let path = cache.path_of(&d, executable);
        if !cache.has(&d, executable) {
            // A file of another size under its name (cut short) would stay in place of the
            // download, which is placed only where nothing is.
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a cached bundle file of the wrong size");
            }
            missing.push((d, executable));
            continue;
        }
        match testfleet_bundle::blob::hash_file(&path) {
            Ok(found) if found == d => {}
            found => {
                tracing::warn!(
                    file = %path.display(),
                    found = ?found.map(|f| f.to_string()),
                    "a cached bundle file is damaged (its contents no longer match its digest): fetching it again"
                );
                let _ = std::fs::remove_file(&path);
                missing.push((d, executable));
            }
        }
    }
    missing
}

fn download_error(digest: &str, s: &tonic::Status) -> CacheError {
    CacheError::Download {
        digest: digest.to_owned(),
        status: s.message().to_owned(),
    }
}

/// Downloads `missing` into the cache, `DOWNLOADS_AT_ONCE` at a time.
async fn download_all(
    digest: &str,
    client: &Client,
    files: &FileCache,
    missing: &[(BlobDigest, bool)],
    fetched: &mut Fetched,
) -> Result<(), CacheError> {
    let mut queue = missing.iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < DOWNLOADS_AT_ONCE {
            let Some(&(d, executable)) = queue.next() else {
                break;
            };
            let (client, files, bundle) = (client.clone(), files.clone(), digest.to_owned());
            running.spawn(async move { download(&bundle, client, &files, d, executable).await });
        }
        let Some(done) = running.join_next().await else {
            return Ok(());
        };
        let (size, received) = done.expect("a download does not panic")?;
        fetched.downloaded += 1;
        fetched.downloaded_bytes += size;
        fetched.received_bytes += received;
    }
}

/// Downloads one file into the cache, checked as it is written; returns its size and the bytes
/// received. The frame is decompressed on a blocking thread as chunks arrive.
async fn download(
    bundle: &str,
    mut client: Client,
    files: &FileCache,
    d: BlobDigest,
    executable: bool,
) -> Result<(u64, u64), CacheError> {
    let mut stream = client
        .download_blob(pb::BlobDigest {
            sha256: d.sha256_hex(),
            size: d.size,
        })
        .await
        .map_err(|s| file_download_error(bundle, d, &s))?
        .into_inner();
    let incoming = files
        .begin(d, executable)
        .map_err(|source| CacheError::Bundle {
            digest: bundle.to_owned(),
            source,
        })?;
    // `None` ends the frame; a channel closed without it was cut off, and what was written is
    // thrown away (the unfinished `Incoming` removes it).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(4);
    let writing = tokio::task::spawn_blocking(move || {
        let mut incoming = incoming;
        let mut received = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Some(data)) => {
                    received += data.len() as u64;
                    incoming.write(&data)?;
                }
                Some(None) => return incoming.finish().map(|_: PathBuf| received),
                // Cut off: dropped unfinished, it leaves nothing (its caller says why).
                None => return Ok(received),
            }
        }
    });
    let streamed = async {
        while let Some(chunk) = stream.message().await? {
            if tx.send(Some(chunk.data)).await.is_err() {
                break; // the writer failed: its error says why
            }
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    match streamed {
        Ok(()) => {
            let _ = tx.send(None).await;
            drop(tx);
            let received = writing
                .await
                .expect("a file's writer does not panic")
                .map_err(|source| CacheError::Bundle {
                    digest: bundle.to_owned(),
                    source,
                })?;
            Ok((d.size, received))
        }
        Err(s) => {
            // Cut off: the writer, given no end of frame, throws away what it wrote.
            drop(tx);
            let _ = writing.await;
            Err(file_download_error(bundle, d, &s))
        }
    }
}

fn file_download_error(bundle: &str, d: BlobDigest, s: &tonic::Status) -> CacheError {
    CacheError::Download {
        digest: bundle.to_owned(),
        status: format!("file {d}: {}", s.message()),
    }
}
