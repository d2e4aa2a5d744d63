//! Talking to a coordinator as a client: connecting (the address named when it fails), calls that
//! keep trying a coordinator that is restarting for a while, and uploading bundles once per digest.

use std::future::Future;
use std::time::{Duration, Instant};

use testfleet_bundle::PackedBundle;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use testfleet_security::{AuthChannel, ClientSecurity, explain_connect_error};
use tokio_stream::StreamExt;

use crate::error::{CliError, CliResult};

pub type Client = CoordinatorClient<AuthChannel>;

/// Connects to the coordinator at `url`. A coordinator that refuses the connection (restarting,
/// or not started yet) is tried again for up to `wait`, saying so once; any other failure (a name
/// that does not resolve, TLS) is said at once.
pub async fn connect(url: &str, security: &ClientSecurity, wait: Duration) -> CliResult<Client> {
    let endpoint = security
        .endpoint(url)
        .map_err(|e| CliError::Config(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let mut patience = Patience::new(url, wait);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) if is_refused(&e) && patience.again(&explain_connect_error(&e)).await => {}
            Err(e) => {
                return Err(CliError::Unreachable {
                    url: url.to_owned(),
                    reason: explain_connect_error(&e),
                });
            }
        }
    };
    Ok(CoordinatorClient::new(security.wrap(channel))
        // What a client sends is bounded by the coordinator (--max-message-bytes), which names
        // its limit when hit; this side only bounds what it accepts.
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX))
}

/// Whether a connection failed because nothing listens there (yet).
fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Trying a coordinator again while it is unavailable, for a while: backing off from 200 ms to
/// 2 s, and saying once on stderr what is going on and how to change it.
struct Patience<'a> {
    url: &'a str,
    until: Instant,
    wait: Duration,
    delay: Duration,
    said: bool,
}

impl<'a> Patience<'a> {
    fn new(url: &'a str, wait: Duration) -> Self {
        Patience {
            url,
            until: Instant::now() + wait,
            wait,
            delay: Duration::from_millis(200),
            said: false,
        }
    }

    /// Waits before the next try; false once the time is up.
    async fn again(&mut self, why: &str) -> bool {
        if Instant::now() + self.delay > self.until {
            return false;
        }
        if !std::mem::replace(&mut self.said, true) {
            eprintln!(
                "the coordinator at {} is unavailable ({why}); trying again for up to {} s (--connect-wait)",
                self.url,
                self.wait.as_secs()
            );
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        true
    }
}

/// Makes `call` again while the coordinator answers that it is unavailable (restarting: the
/// connection refused or cut, or the server stopping), for up to `wait`. Only for calls that are
/// safe to repeat: a submission the coordinator took before it went away would be taken twice.
pub async fn patiently<T, F, Fut>(
    url: &str,
    wait: Duration,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut patience = Patience::new(url, wait);
    loop {
        match call().await {
            Err(s) if s.code() == tonic::Code::Unavailable && patience.again(s.message()).await => {
            }
            other => return other,
        }
    }
}

async fn has(client: &Client, url: &str, bundle: &PackedBundle, wait: Duration) -> CliResult<bool> {
    let reply = patiently(url, wait, || {
        let mut client = client.clone();
        let digest = bundle.digest.clone();
        async move { client.has_bundle(pb::BundleRef { digest }).await }
    })
    .await;
    Ok(reply
        .map_err(|s| CliError::from_status(url, s))?
        .into_inner()
        .present)
}

/// Uploads the bundle unless the coordinator has it already. Returns whether bytes were sent. An
/// upload the coordinator was not there for is made again (for up to `wait`): one cut off leaves
/// nothing on the coordinator.
pub async fn upload_bundle(
    client: &Client,
    url: &str,
    bundle: &PackedBundle,
    wait: Duration,
) -> CliResult<bool> {
    if has(client, url, bundle, wait).await? {
        return Ok(false);
    }
    let read_error = std::sync::Arc::new(std::sync::Mutex::new(None));
    let reply = patiently(url, wait, || {
        send(client.clone(), bundle, read_error.clone())
    })
    .await;
    if let Some(e) = read_error.lock().expect("lock").take() {
        return Err(CliError::Bundle(format!(
            "cannot read bundle {}: {e}",
            bundle.path.display()
        )));
    }
    match reply {
        Ok(()) => Ok(true),
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

/// Streams the bundle's file once. A local read error ends the upload early (the coordinator then
/// refuses the short bundle) and is kept in `read_error`, to be said instead.
async fn send(
    mut client: Client,
    bundle: &PackedBundle,
    read_error: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>>,
) -> Result<(), tonic::Status> {
    let file = match tokio::fs::File::open(&bundle.path).await {
        Ok(file) => file,
        Err(e) => {
            let status = tonic::Status::aborted(e.to_string());
            *read_error.lock().expect("lock") = Some(e);
            return Err(status);
        }
    };
    let chunks = testfleet_proto::file_chunks(file, bundle.digest.clone(), bundle.size).map_while(
        move |c| {
            c.map_err(|e| *read_error.lock().expect("lock") = Some(e))
                .ok()
        },
    );
    client.upload_bundle(chunks).await.map(|_| ())
}

/// A request carrying `span`'s trace context.
pub(crate) fn traced<T>(span: &tracing::Span, message: T) -> tonic::Request<T> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut request = tonic::Request::new(message);
    testfleet_proto::trace::inject(&span.context(), request.metadata_mut());
    request
}
