//! Sending a bundle of content-addressed files to a coordinator: ask which files it lacks, upload
//! only those (each compressed into one zstd frame while it is read, a few at once), then store
//! the manifest that names them. Every call is made again while the coordinator restarts
//! (`--connect-wait`); an upload cut off leaves nothing there, and is simply sent again.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testfleet_bundle::blob::BlobDigest;
use testfleet_proto::{BUNDLE_CHUNK_BYTES, pb};
use tokio::task::JoinSet;

use crate::error::{CliError, CliResult};
use crate::prepare::file_manifest::FileBundle;
use crate::remote::{Client, patiently};

/// Files asked about in one `FindMissingBlobs` (the coordinator takes up to 100,000).
const ASK_AT_ONCE: usize = 10_000;
/// Files uploaded at once: enough to hide round trips, few enough that compressing them does not
/// take every core of a developer's machine.
const UPLOADS_AT_ONCE: usize = 4;
/// Times the manifest is offered again after uploading what it still lacked (only a file removed
/// on the coordinator meanwhile, as corrupt, would make it lack anything).
const MANIFEST_TRIES: usize = 3;

/// What sending a bundle moved.
#[derive(Debug, Default)]
pub struct Sent {
    /// The coordinator had the whole bundle: nothing was asked or sent.
    pub present: bool,
    /// The bundle's files, and how many of them had contents new to the coordinator (a file
    /// whose contents another file of the bundle has too is sent once, and counted).
    pub files: usize,
    pub new_files: usize,
    /// Of the new contents (each once), before and after compression.
    pub new_bytes: u64,
    pub sent_bytes: u64,
}

/// Sends `bundle` unless the coordinator has it. `Ok(None)`: this coordinator does not take
/// bundles of files (an older version), and the caller sends an archive instead.
pub async fn upload(
    client: &Client,
    url: &str,
    bundle: &FileBundle,
    wait: Duration,
) -> CliResult<Option<Sent>> {
    let files = bundle.entries.len();
    let has = patiently(url, wait, || {
        let mut client = client.clone();
        let digest = bundle.digest.clone();
        async move { client.has_bundle(pb::BundleRef { digest }).await }
    })
    .await
    .map_err(|s| CliError::from_status(url, s))?;
    if has.into_inner().present {
        return Ok(Some(Sent {
            present: true,
            files,
            ..Sent::default()
        }));
    }
    let mut digests: Vec<BlobDigest> = bundle.sources.keys().copied().collect();
    digests.sort_unstable_by_key(|d| (d.sha256, d.size));
    let mut missing = Vec::new();
    for batch in digests.chunks(ASK_AT_ONCE) {
        let asked = patiently(url, wait, || {
            let mut client = client.clone();
            let blobs = batch.iter().map(to_wire).collect();
            async move {
                client
                    .find_missing_blobs(pb::FindMissingBlobsRequest { blobs })
                    .await
            }
        })
        .await;
        match asked {
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(s) => return Err(CliError::from_status(url, s)),
            Ok(r) => {
                for d in &r.into_inner().missing {
                    missing.push(from_wire(d)?);
                }
            }
        }
    }
    let mut sent = Sent {
        files,
        ..Sent::default()
    };
    let mut uploaded = std::collections::HashSet::new();
    for _ in 0..MANIFEST_TRIES {
        send_files(client, url, bundle, &missing, wait, &mut sent).await?;
        // A file sent again (removed on the coordinator meanwhile) counts once.
        uploaded.extend(missing.iter().copied());
        let reply = patiently(url, wait, || {
            let mut client = client.clone();
            let request = pb::PutManifestRequest {
                digest: bundle.digest.clone(),
                manifest: bundle.text.clone(),
            };
            async move { client.put_manifest(request).await }
        })
        .await
        .map_err(|s| refused("the bundle's manifest", url, s))?;
        missing = reply
            .into_inner()
            .missing
            .iter()
            .map(from_wire)
            .collect::<CliResult<_>>()?;
        if missing.is_empty() {
            sent.new_files = bundle
                .entries
                .iter()
                .filter(|d| uploaded.contains(d))
                .count();
            sent.new_bytes = uploaded.iter().map(|d| d.size).sum();
            return Ok(Some(sent));
        }
    }
    Err(CliError::Bundle(format!(
        "the coordinator still lacks {} files of the bundle after {MANIFEST_TRIES} uploads",
        missing.len()
    )))
}

fn to_wire(d: &BlobDigest) -> pb::BlobDigest {
    pb::BlobDigest {
        sha256: d.sha256_hex(),
        size: d.size,
    }
}

fn from_wire(d: &pb::BlobDigest) -> CliResult<BlobDigest> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(&d.sha256, &mut sha256).map_err(|_| {
        CliError::Bundle(format!(
            "the coordinator named a file `{}` that is not a sha256",
            d.sha256.chars().take(80).collect::<String>()
        ))
    })?;
    Ok(BlobDigest {
        sha256,
        size: d.size,
    })
}

/// A refusal of the coordinator about `what`, or the failure to reach it.
fn refused(what: &str, url: &str, s: tonic::Status) -> CliError {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => {
            CliError::Bundle(format!("the coordinator refused {what}: {}", s.message()))
        }
        _ => CliError::from_status(url, s),
    }
}

/// Uploads the files `missing` names, `UPLOADS_AT_ONCE` at a time.
async fn send_files(
    client: &Client,
    url: &str,
    bundle: &FileBundle,
    missing: &[BlobDigest],
    wait: Duration,
    sent: &mut Sent,
) -> CliResult<()> {
    let mut queue = missing.iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < UPLOADS_AT_ONCE {
            let Some(d) = queue.next() else { break };
            let Some(path) = bundle.sources.get(d).cloned() else {
                return Err(CliError::Bundle(format!(
                    "the coordinator asked for a file {d} the bundle does not name"
                )));
            };
            let (client, url, d) = (client.clone(), url.to_owned(), *d);
            running.spawn(async move { upload_one(&client, &url, d, path, wait).await });
        }
        let Some(done) = running.join_next().await else {
            return Ok(());
        };
        let compressed = done.map_err(|e| CliError::Internal(e.into()))??;
        sent.sent_bytes += compressed;
    }
}

/// Uploads one file, compressing it as it goes; returns the bytes sent.
async fn upload_one(
    client: &Client,
    url: &str,
    d: BlobDigest,
    path: PathBuf,
    wait: Duration,
) -> CliResult<u64> {
    let local_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let compressed = Arc::new(AtomicU64::new(0));
    let reply = patiently(url, wait, || {
        let mut client = client.clone();
        let (path, local_error, compressed) =
            (path.clone(), local_error.clone(), compressed.clone());
        async move {
            compressed.store(0, Ordering::Relaxed);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let source = path.clone();
            let reading = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&source)?;
                let mut out = ChunkSender {
                    tx,
                    buf: Vec::with_capacity(BUNDLE_CHUNK_BYTES),
                    first: Some(d),
                    sent: compressed,
                };
                let read = testfleet_bundle::blob::compress(file, &mut out)?;
                out.flush()?;
                Ok::<_, std::io::Error>(read)
            });
            let reply = client
                .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // What went wrong on this side says more than the coordinator's refusal of a
            // frame that ended early or did not match.
            match reading.await {
                Ok(Ok(read)) if read == d => {}
                Ok(Ok(read)) => {
                    *local_error.lock().expect("lock") = Some(format!(
                        "{} changed while the bundle was being sent ({} bytes then, {} now): run again once it is written",
                        path.display(),
                        d.size,
                        read.size
                    ));
                }
                Ok(Err(e)) if reply.is_ok() || e.kind() != std::io::ErrorKind::BrokenPipe => {
                    *local_error.lock().expect("lock") =
                        Some(format!("cannot read {}: {e}", path.display()));
                }
                _ => {}
            }
            reply
        }
    })
    .await;
    if let Some(e) = local_error.lock().expect("lock").take() {
        return Err(CliError::Bundle(e));
    }
    reply.map_err(|s| refused(&format!("file {}", path.display()), url, s))?;
    Ok(compressed.load(Ordering::Relaxed))
}

/// Hands a frame to the upload stream a chunk at a time; the first names the file.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<pb::BundleChunk>,
    buf: Vec<u8>,
    first: Option<BlobDigest>,
    sent: Arc<AtomicU64>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BUNDLE_CHUNK_BYTES));
        self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
        let (digest, total_size) = match self.first.take() {
            Some(d) => (d.sha256_hex(), d.size),
            None => (String::new(), 0),
        };
        self.tx
            .blocking_send(pb::BundleChunk {
                digest,
                total_size,
                data,
            })
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(BUNDLE_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BUNDLE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends what is buffered; called once, at the end of the frame.
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() || self.first.is_some() {
            self.send()?;
        }
        Ok(())
    }
}
