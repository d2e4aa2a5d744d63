//! A run's trace: a span from submission to the run's end, continuing the submitting client's
//! trace (its `traceparent`) and parent of every attempt's span, which agents make from the
//! traceparent their leases carry. Spans go wherever the process's `tracing` subscriber sends
//! the `testfleet::trace` target (the CLI exports them over OTLP when `OTEL_*` says so).

use testfleet_model::{RunId, RunSummary};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans meant for export (and nothing else).
pub const TRACE_TARGET: &str = "testfleet::trace";

pub struct RunTrace {
    span: tracing::Span,
    /// For leases: the run span's context on the wire (empty when nothing traces).
    pub traceparent: String,
}

impl RunTrace {
    /// The run's span, a child of `parent` (a client's context, or an empty one: a new trace).
    pub fn start(run_id: RunId, suite: &str, tests: usize, parent: opentelemetry::Context) -> Self {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "testfleet.run",
            otel.kind = "server",
            testfleet.run_id = %run_id,
            testfleet.suite = suite,
            testfleet.tests = tests as u64,
            testfleet.passed = tracing::field::Empty,
            testfleet.failed = tracing::field::Empty,
            testfleet.flaky = tracing::field::Empty,
            testfleet.timed_out = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let traceparent = testfleet_proto::trace::to_traceparent(&span.context());
        RunTrace { span, traceparent }
    }

    /// Nothing traced (scheduler tests).
    pub fn none() -> Self {
        RunTrace {
            span: tracing::Span::none(),
            traceparent: String::new(),
        }
    }

    /// Records the run's end and closes its span.
    pub fn finish(self, summary: &RunSummary) {
        let s = &self.span;
        s.record("testfleet.passed", summary.passed);
        s.record("testfleet.failed", summary.failed);
        s.record("testfleet.flaky", summary.flaky);
        s.record("testfleet.timed_out", summary.timed_out);
        s.record(
            "otel.status_code",
            if summary.exit_code() == 0 {
                "ok"
            } else {
                "error"
            },
        );
    }
}
