//! Streaming a bundle file as `BundleChunk`s: the first chunk names the digest and total size, so
//! both an upload (CLI → coordinator) and a download (coordinator → agent) read the same way.

use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::{BUNDLE_CHUNK_BYTES, pb};

/// Reads `file` in the background and yields its chunks; an empty file still yields one chunk, so
/// the receiver always learns the digest. A read error ends the stream after being yielded.
pub fn file_chunks(
    mut file: tokio::fs::File,
    digest: String,
    total_size: u64,
) -> ReceiverStream<std::io::Result<pb::BundleChunk>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; BUNDLE_CHUNK_BYTES];
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if n == 0 && !first {
                return;
            }
            buf.truncate(n);
            let chunk = pb::BundleChunk {
                digest: if first { digest.clone() } else { String::new() },
                total_size: if first { total_size } else { 0 },
                data: buf,
            };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() || n == 0 {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
