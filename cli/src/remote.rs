//! Talking to a coordinator as a client: connecting (fast failure with the address named) and
//! uploading bundles once per digest.

use std::time::Duration;

use testfleet_bundle::PackedBundle;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use tokio_stream::StreamExt;
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
    let file = tokio::fs::File::open(&bundle.path).await.map_err(|e| {
        CliError::Bundle(format!("cannot read bundle {}: {e}", bundle.path.display()))
    })?;
    let read_error = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = read_error.clone();
    // A read error ends the upload early; the coordinator then refuses the short bundle, and the
    // error said here is the local one.
    let chunks = testfleet_proto::file_chunks(file, bundle.digest.clone(), bundle.size)
        .map_while(move |c| c.map_err(|e| *seen.lock().expect("lock") = Some(e)).ok());
    let reply = client.upload_bundle(chunks).await;
    if let Some(e) = read_error.lock().expect("lock").take() {
        return Err(CliError::Bundle(format!(
            "cannot read bundle {}: {e}",
            bundle.path.display()
        )));
    }
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
