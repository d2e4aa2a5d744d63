//! Each attempt's span: a child of its run's span (the lease's `traceparent`), made when the
//! attempt has ended, with its start and end, its outcome, the agent and the test. Exported by
//! whatever OpenTelemetry provider the process installed (none: nothing happens).

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
use testfleet_model::{AttemptKey, AttemptResult, AttemptStatus};

/// What an attempt's span needs besides the attempt: its lease's trace and this agent.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseTrace {
    pub traceparent: String,
    pub agent_id: String,
}

/// Spans for attempts that ran one after another and just ended (a batch runs its tests in
/// order; a single test is a batch of one).
pub(crate) fn record(
    trace: &LeaseTrace,
    // Each attempt's binary and test name, in the order of `results`.
    tests: &[(&str, &str)],
    results: &[(AttemptKey, AttemptResult)],
) {
    // Without the run's context there is no trace to join (the coordinator does not trace).
    if trace.traceparent.is_empty() {
        return;
    }
    let parent = testfleet_proto::trace::from_traceparent(&trace.traceparent);
    let tracer = opentelemetry::global::tracer("testfleet-agent");
    let mut end = SystemTime::now();
    // Walk back from now: the last attempt ended now, each earlier one where the next began.
    for ((binary_id, name), (key, result)) in tests.iter().zip(results).rev() {
        let start = end.checked_sub(result.duration).unwrap_or(end);
        let status = if matches!(
            result.status,
            AttemptStatus::Passed | AttemptStatus::Skipped
        ) {
            Status::Ok
        } else {
            Status::error(result.message.clone())
        };
        let mut span = tracer
            .span_builder("testfleet.attempt")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("testfleet.run_id", key.run_id.to_string()),
                KeyValue::new("testfleet.lease_id", key.lease_id.to_string()),
                KeyValue::new("testfleet.test.binary", binary_id.to_string()),
                KeyValue::new("testfleet.test.name", name.to_string()),
                KeyValue::new("testfleet.attempt", i64::from(key.attempt)),
                KeyValue::new("testfleet.agent", trace.agent_id.clone()),
                KeyValue::new("testfleet.outcome", result.status.label()),
                KeyValue::new("testfleet.duration_ms", result.duration.as_millis() as i64),
            ])
            .start_with_context(&tracer, &parent);
        span.set_status(status);
        span.end_with_timestamp(end);
        end = start;
    }
}
