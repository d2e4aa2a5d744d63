//! Talking to a coordinator as a client: connecting (fast failure with the address named) and
//! uploading bundles once per digest.

use std::time::Duration;

use testfleet_bundle::PackedBundle;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use testfleet_security::{AuthChannel, ClientSecurity, explain_connect_error};
use tokio_stream::StreamExt;

use crate::error::{CliError, CliResult};

pub type Client = CoordinatorClient<AuthChannel>;

pub async fn connect(url: &str, security: &ClientSecurity) -> CliResult<Client> {
    let endpoint = security
        .endpoint(url)
        .map_err(|e| CliError::Config(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            url: url.to_owned(),
            reason: explain_connect_error(&e),
        })?;
    Ok(CoordinatorClient::new(security.wrap(channel))
        // What a client sends is bounded by the coordinator (--max-message-bytes), which names
        // its limit when hit; this side only bounds what it accepts.
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX))
}

async fn has(client: &mut Client, url: &str, bundle: &PackedBundle) -> CliResult<bool> {
    Ok(client
        .has_bundle(pb::BundleRef {
            digest: bundle.digest.clone(),
        })
        .await
        .map_err(|s| CliError::from_status(url, s))?
        .into_inner()
        .present)
}

/// Uploads the bundle unless the coordinator has it already. Returns whether bytes were sent.
pub async fn upload_bundle(
    client: &mut Client,
    url: &str,
    bundle: &PackedBundle,
) -> CliResult<bool> {
    if has(client, url, bundle).await? {
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

/// A request carrying `span`'s trace context.
pub(crate) fn traced<T>(span: &tracing::Span, message: T) -> tonic::Request<T> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut request = tonic::Request::new(message);
    testfleet_proto::trace::inject(&span.context(), request.metadata_mut());
    request
}
