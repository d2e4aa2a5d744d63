//! Diagnostics on stderr through `tracing`, and traces over OTLP. Servers log at `info` by
//! default; `run` only warns, so its report stays readable. Traces are off unless the standard
//! OpenTelemetry variables ask for them: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names a collector (OTLP over gRPC); `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` and `OTEL_SDK_DISABLED`
//! are honoured as the SDK defines them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::args::{Cli, Command};

/// Traces being exported; flush them with [`Telemetry::shutdown`] before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for traces.
fn traces_wanted() -> bool {
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let none = var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled && !none
}

/// `testfleet-coordinator`, `testfleet-agent`, `testfleet-cli`, unless `OTEL_SERVICE_NAME` says.
fn service_name(cli: &Cli) -> String {
    var("OTEL_SERVICE_NAME").unwrap_or_else(|| {
        match cli.command {
            Command::Coordinator(_) => "testfleet-coordinator",
            Command::Agent(_) => "testfleet-agent",
            _ => "testfleet-cli",
        }
        .to_owned()
    })
}

/// An OTLP exporter as the environment configures it. Must run inside the Tokio runtime: the
/// gRPC channel lives there.
fn provider(cli: &Cli) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name(cli))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

pub fn init(cli: &Cli) -> Telemetry {
    let default = match cli.command {
        Command::Coordinator(_) | Command::Agent(_) => "info,h2=warn,tower=warn,hyper=warn",
        _ => "warn",
    };
    let filter = cli
        .log
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // Colours only for a terminal: a log redirected to a file (an agent's or a coordinator's,
    // as services write them) stays plain text for grep and log collectors.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .with_filter(filter);
    let (provider, problem) = if traces_wanted() {
        match provider(cli) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    // Only the spans meant for export (runs, submissions) go out, whatever the log level.
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("testfleet"))
            .with_filter(Targets::new().with_target(
                testfleet_coordinator::run_trace::TRACE_TARGET,
                LevelFilter::INFO,
            ))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = problem {
        tracing::warn!(error = %e, "traces are off: the OTLP exporter could not be set up");
    }
    Telemetry { provider }
}

impl Telemetry {
    /// Sends what is still buffered (waits for the collector, within the SDK's export timeout).
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown() {
                    tracing::warn!(error = %e, "traces: the last spans could not be sent");
                }
            })
            .await;
        }
    }
}
