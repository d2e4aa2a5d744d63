//! OpenTelemetry traces, exported over OTLP/gRPC to a real receiver in this test: the CLI's span,
//! the coordinator's run span and every attempt's span from the agent form one trace, with the
//! run's tests, outcomes, attempts and agents.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use testfleet_model::EventKind;
use testfleet_model::TestFinished;

use crate::support::*;

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                Value::StringValue(s) => s,
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn a_run_is_one_trace_from_the_cli_through_the_coordinator_to_each_attempt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = TraceServiceServer::new(receiver.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator_with_env(dir.path(), &env);
    let mut cmd = agent_command(dir.path(), &url, "agent-t", 2);
    cmd.envs(env);
    let mut agent = Proc::spawn(cmd, dir.path().join("agent-t.log"));
    wait_for_agents(&url, 1);
    let mut cli = testfleet();
    cli.envs(env);
    let events = fixture_run_on(cli, &url, &[]);
    let run_id = events[0].run_id.to_string();
    // Stopping flushes what the coordinator and the agent still buffer.
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(coord.stop().success(), "{}", coord.log());

    // Every attempt an agent ran, as the run's events tell it.
    let mut expected: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for e in &events {
        if let EventKind::TestFinished(TestFinished {
            test,
            attempt,
            agent_id,
            result,
            lease_id: Some(_),
            ..
        }) = &e.kind
        {
            expected.insert(
                (test.name.to_string(), attempt.to_string()),
                (agent_id.clone(), result.status.label().to_owned()),
            );
        }
    }
    let spans = || receiver.0.lock().unwrap().clone();
    wait_until("every span reaches the receiver", || {
        let s = spans();
        s.iter()
            .filter(|r| r.span.name == "testfleet.attempt")
            .count()
            >= expected.len()
            && s.iter().any(|r| r.span.name == "testfleet.run")
            && s.iter().any(|r| r.span.name == "testfleet run")
    });
    let spans = spans();
    let named = |name: &str| {
        spans
            .iter()
            .find(|r| r.span.name == name)
            .unwrap_or_else(|| panic!("no span {name}"))
    };
    let root = named("testfleet run");
    assert_eq!(root.service, "testfleet-cli");
    assert_eq!(
        root.attr("testfleet.run_id").as_deref(),
        Some(run_id.as_str())
    );
    let run = named("testfleet.run");
    assert_eq!(run.service, "testfleet-coordinator");
    assert_eq!(
        run.attr("testfleet.run_id").as_deref(),
        Some(run_id.as_str())
    );
    assert_eq!(
        run.span.parent_span_id, root.span.span_id,
        "the run continues the CLI's span"
    );
    let trace = &root.span.trace_id;
    assert!(spans.iter().all(|r| &r.span.trace_id == trace), "one trace");

    let attempts: BTreeMap<(String, String), (String, String)> = spans
        .iter()
        .filter(|r| r.span.name == "testfleet.attempt")
        .map(|r| {
            assert_eq!(r.service, "testfleet-agent");
            assert_eq!(
                r.span.parent_span_id, run.span.span_id,
                "attempts are the run's children"
            );
            assert_eq!(r.attr("testfleet.run_id").as_deref(), Some(run_id.as_str()));
            assert!(
                r.attr("testfleet.test.binary")
                    .is_some_and(|b| b.starts_with("fixture-basic"))
            );
            (
                (
                    r.attr("testfleet.test.name").unwrap(),
                    r.attr("testfleet.attempt").unwrap(),
                ),
                (
                    r.attr("testfleet.agent").unwrap(),
                    r.attr("testfleet.outcome").unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(attempts, expected);
    // A timed-out attempt lasted its timeout; the span says so.
    let hang = spans
        .iter()
        .find(|r| r.attr("testfleet.test.name").as_deref() == Some("tests::hangs"))
        .unwrap();
    let nanos = hang.span.end_time_unix_nano - hang.span.start_time_unix_nano;
    assert!(nanos >= 4_000_000_000, "{nanos}");
    drop(rt);
}
