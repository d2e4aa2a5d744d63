//! The coordinator survives whatever a client or agent sends: raw bytes on its port, requests that
//! make no sense, agent sessions full of invented keys. Afterwards it still runs a run to the end.

mod common;

use std::time::Duration;

use testfleet_model::RunSpec;
use testfleet_proto::pb;
use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const GUARD: Duration = Duration::from_secs(60);

fn msg(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

fn hello(id: &str, slots: u32) -> pb::AgentMessage {
    msg(pb::agent_message::Kind::Hello(pb::Hello {
        agent_id: id.into(),
        slots,
        version: "test".into(),
        ..Default::default()
    }))
}

fn key(run: &str, index: u32, attempt: u32, lease: &str) -> Option<pb::AttemptKey> {
    Some(pb::AttemptKey {
        run_id: run.into(),
        test_index: index,
        attempt,
        lease_id: lease.into(),
    })
}

fn spec(tests: usize) -> pb::RunSpec {
    pb::RunSpec::from(&RunSpec {
        suite: "garbage".into(),
        ..common::model_spec(tests)
    })
}

/// Everything an agent can say that makes no sense, after a proper Hello.
fn nonsense(run: &str) -> Vec<pb::AgentMessage> {
    use pb::agent_message::Kind;
    let big = pb::AttemptResult {
        status: 99,
        output: vec![0xff; 100_000],
        message: "\u{0}".repeat(1000),
        ..Default::default()
    };
    vec![
        hello("again", 1),
        msg(Kind::Heartbeat(pb::Heartbeat {})),
        pb::AgentMessage { kind: None },
        msg(Kind::TestStarted(pb::TestStarted { key: None })),
        msg(Kind::TestStarted(pb::TestStarted {
            key: key("not-a-run", 0, 0, "zz"),
        })),
        msg(Kind::TestFinished(pb::TestFinished {
            key: key(run, u32::MAX, 1, "1"),
            result: Some(big.clone()),
        })),
        msg(Kind::TestFinished(pb::TestFinished {
            key: key(run, 0, 0, &u64::MAX.to_string()),
            result: Some(pb::AttemptResult::default()),
        })),
        msg(Kind::TestFinished(pb::TestFinished {
            key: key("999999", 0, 1, "5"),
            result: None,
        })),
        msg(Kind::LeaseReleased(pb::LeaseReleased {
            lease_id: "-1".into(),
            test_indices: vec![u32::MAX, 0],
        })),
        msg(Kind::LeaseReleased(pb::LeaseReleased {
            lease_id: "123".into(),
            test_indices: vec![],
        })),
        msg(Kind::ServiceStarted(pb::ServiceStarted {
            run_id: run.into(),
            lease_id: "x".into(),
            service: "../../etc".into(),
            scope: 42,
            ..Default::default()
        })),
    ]
}

/// A well-behaved agent: passes every test it is leased, until the coordinator ends the session.
async fn honest_agent(channel: Channel) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(hello("honest", 4)).unwrap();
    let mut inbound = AgentGatewayClient::new(channel)
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let work = || {
        msg(pb::agent_message::Kind::WorkRequest(pb::WorkRequest {
            free_slots: 4,
            queue_slots: 0,
        }))
    };
    tx.send(work()).unwrap();
    while let Some(Ok(m)) = inbound.next().await {
        if let Some(pb::coordinator_message::Kind::Lease(lease)) = m.kind {
            for t in &lease.tests {
                tx.send(msg(pb::agent_message::Kind::TestFinished(
                    pb::TestFinished {
                        key: key(&lease.run_id, t.index, t.attempt, &lease.lease_id),
                        result: Some(pb::AttemptResult {
                            status: pb::AttemptStatus::Passed as i32,
                            duration_ms: 1,
                            ..Default::default()
                        }),
                    },
                )))
                .unwrap();
            }
            tx.send(work()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_clients_and_agents_leaves_the_coordinator_serving() {
    let dir = tempfile::tempdir().unwrap();
    let common::Served {
        addr,
        channel,
        stop,
        server,
    } = common::serve(dir.path()).await;

    // Raw bytes, and an HTTP/2 preface followed by rubbish.
    for prefix in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut junk = prefix.to_vec();
        let mut x: u32 = 0x1234_5678;
        junk.extend((0..65_536).map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        }));
        let _ = s.write_all(&junk).await;
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(GUARD, async {
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    let mut client = CoordinatorClient::new(channel.clone());
    // Requests that make no sense are refused, each with a reason.
    let refused = [
        client
            .submit_run(pb::SubmitRunRequest {
                spec: None,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .submit_run(pb::SubmitRunRequest {
                spec: Some(pb::RunSpec {
                    tests: vec![pb::TestSpec {
                        binary: 7,
                        name: "t".into(),
                        ..Default::default()
                    }],
                    ..spec(0)
                }),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .watch_run(pb::WatchRunRequest {
                run_id: "../1".into(),
                from_seq: u64::MAX,
                omit_passing_output: true,
            })
            .await
            .unwrap_err(),
        client
            .cancel_run(pb::CancelRunRequest {
                run_id: "-1".into(),
            })
            .await
            .unwrap_err(),
        client
            .has_bundle(pb::BundleRef {
                digest: "../../etc/passwd".into(),
            })
            .await
            .unwrap_err(),
        client
            .upload_bundle(tokio_stream::iter(vec![pb::BundleChunk {
                digest: "00".repeat(32),
                total_size: 3,
                data: b"not what it says".to_vec(),
            }]))
            .await
            .unwrap_err(),
    ];
    for status in &refused {
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{status:?}"
        );
        assert!(!status.message().is_empty());
    }

    // A run, then an agent that says nothing but nonsense about it; its session is dropped.
    let run_id = client
        .submit_run(pb::SubmitRunRequest {
            spec: Some(spec(20)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let first_not_hello = AgentGatewayClient::new(channel.clone())
        .session(tokio_stream::iter(vec![msg(
            pb::agent_message::Kind::Heartbeat(pb::Heartbeat {}),
        )]))
        .await;
    assert_eq!(
        first_not_hello.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut garbage = vec![hello("babbler", 1)];
    garbage.extend(nonsense(&run_id));
    let session = AgentGatewayClient::new(channel.clone())
        .session(tokio_stream::iter(garbage))
        .await
        .unwrap();
    drop(session);

    // The run still goes to its end on an honest agent, and nothing invented was counted.
    let agent = tokio::spawn(honest_agent(channel.clone()));
    let summary = common::watch_to_end(&mut client, &run_id, GUARD)
        .await
        .into_iter()
        .find_map(|e| match e.kind {
            Some(pb::run_event::Kind::RunFinished(f)) => f.summary,
            _ => None,
        })
        .expect("the run finished");
    assert_eq!(summary.passed, 20, "{summary:?}");
    assert_eq!(summary.failed + summary.infra_errors, 0, "{summary:?}");

    let _ = stop.send(());
    tokio::time::timeout(GUARD, server).await.unwrap().unwrap();
    agent.abort();
}
