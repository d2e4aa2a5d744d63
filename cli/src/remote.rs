//! Talking to a coordinator as a client: connecting (fast failure with the address named) and
//! uploading bundles once per digest.

use std::time::Duration;

use testfleet_bundle::PackedBundle;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{BUNDLE_CHUNK_BYTES, MAX_MESSAGE_BYTES, pb};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CliError, CliResult};

pub type Client = CoordinatorClient<Channel>;

pub async fn connect(url: &str) -> CliResult<Client> {
    let unreachable = |reason: String| CliError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| unreachable(format!("invalid URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        unreachable(reason)
    })?;
    Ok(CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Uploads the bundle unless the coordinator has it already. Returns whether bytes were sent.
pub async fn upload_bundle(
    client: &mut Client,
    url: &str,
    bundle: &PackedBundle,
) -> CliResult<bool> {
    let present = client
        .has_bundle(pb::BundleRef {
            digest: bundle.digest.clone(),
        })
        .await
        .map_err(|s| CliError::from_status(url, s))?
        .into_inner()
        .present;
    if present {
        return Ok(false);
    }
    let mut file = tokio::fs::File::open(&bundle.path).await.map_err(|e| {
        CliError::Bundle(format!("cannot read bundle {}: {e}", bundle.path.display()))
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::BundleChunk>(4);
    let digest = bundle.digest.clone();
    let total_size = bundle.size;
    let path = bundle.path.clone();
    let reader = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; BUNDLE_CHUNK_BYTES];
            let n = file.read(&mut buf).await?;
            if n == 0 && !first {
                return Ok::<_, std::io::Error>(());
            }
            buf.truncate(n);
            let chunk = pb::BundleChunk {
                digest: if first { digest.clone() } else { String::new() },
                total_size: if first { total_size } else { 0 },
                data: buf,
            };
            first = false;
            if tx.send(chunk).await.is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    let reply = client
        .upload_bundle(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader
        .await
        .map_err(|e| CliError::Internal(e.into()))?
        .map_err(|e| CliError::Bundle(format!("cannot read bundle {}: {e}", path.display())))?;
    match reply {
        Ok(_) => Ok(true),
        Err(s)
            if s.code() == tonic::Code::InvalidArgument
                || s.code() == tonic::Code::ResourceExhausted =>
        {
            Err(CliError::Bundle(format!(
                "the coordinator refused the bundle: {}",
                s.message()
            )))
        }
        Err(s) => Err(CliError::from_status(url, s)),
    }
}
