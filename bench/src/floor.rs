//! The transport floor of the scale benchmark: a bare `AgentGateway` that speaks the coordinator's
//! agent protocol (a welcome for each hello, a lease for each work request while tests are left,
//! an ack for each result) and does nothing else: no scheduler, no run state, no history. The same
//! simulated agents run against it on the same machine, so its dispatch latency is what gRPC, the
//! kernel and the agents themselves cost. No coordinator can go below it here, whatever it does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use testfleet_proto::pb::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The coordinator's listen backlog: a thousand agents connect at once.
const LISTEN_BACKLOG: u32 = 4096;

struct Leases {
    /// Every test of the run, as a lease carries it (name and binary, like the coordinator's).
    tests: Vec<pb::LeasedTest>,
    per_lease: usize,
    next_test: AtomicUsize,
    next_lease: AtomicU64,
    /// Work requests wait until the run "starts": until then the agents connect, as they wait
    /// for a submission at a coordinator.
    open: watch::Receiver<bool>,
}

impl Leases {
    /// The next `per_lease` tests, or none when all have been handed out.
    fn next(&self) -> Option<pb::Lease> {
        let start = self.next_test.fetch_add(self.per_lease, Ordering::Relaxed);
        if start >= self.tests.len() {
            return None;
        }
        let end = (start + self.per_lease).min(self.tests.len());
        Some(pb::Lease {
            lease_id: (self.next_lease.fetch_add(1, Ordering::Relaxed) + 1).to_string(),
            run_id: "1".into(),
            tests: self.tests[start..end].to_vec(),
            test_timeout_ms: 60_000,
            kill_grace_ms: 1000,
            output_cap_bytes: 65536,
            ..Default::default()
        })
    }
}

struct Gateway(Arc<Leases>);

fn reply(kind: pb::coordinator_message::Kind) -> Result<pb::CoordinatorMessage, Status> {
    Ok(pb::CoordinatorMessage { kind: Some(kind) })
}

type Replies = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type SessionStream = Replies;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Replies>, Status> {
        use pb::agent_message::Kind;
        use pb::coordinator_message::Kind as Out;
        let mut inbound = req.into_inner();
        let leases = self.0.clone();
        // As at the coordinator, a task reads the session and replies go out through a channel.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut open = leases.open.clone();
            while let Some(Ok(m)) = inbound.next().await {
                let out = match m.kind {
                    Some(Kind::Hello(h)) => Out::Welcome(pb::Welcome {
                        agent_id: h.agent_id,
                        heartbeat_interval_ms: 5000,
                    }),
                    Some(Kind::WorkRequest(_)) => {
                        if open.wait_for(|o| *o).await.is_err() {
                            break;
                        }
                        match leases.next() {
                            Some(lease) => Out::Lease(lease),
                            None => continue,
                        }
                    }
                    Some(Kind::TestFinished(f)) => Out::Ack(pb::Ack { key: f.key }),
                    _ => continue,
                };
                if tx.send(reply(out)).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// A floor gateway serving on loopback from its own runtime (as the coordinator is its own
/// process), until dropped.
pub struct Floor {
    pub url: String,
    open: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Floor {
    /// Serves `spec`'s tests, `per_lease` at a time, once `open` is called.
    pub fn start(spec: &pb::RunSpec, per_lease: usize) -> anyhow::Result<Floor> {
        let tests = spec
            .tests
            .iter()
            .enumerate()
            .map(|(i, t)| pb::LeasedTest {
                index: i as u32,
                attempt: 1,
                name: t.name.clone(),
                binary: Some(spec.binaries[t.binary as usize].clone()),
                ..Default::default()
            })
            .collect();
        let (open, open_rx) = watch::channel(false);
        let leases = Arc::new(Leases {
            tests,
            per_lease: per_lease.max(1),
            next_test: AtomicUsize::new(0),
            next_lease: AtomicU64::new(0),
            open: open_rx,
        });
        let rt = tokio::runtime::Runtime::new()?;
        let listener = {
            let _in_rt = rt.enter();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.1:0".parse()?)?;
            socket.listen(LISTEN_BACKLOG)?
        };
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, mut stop_rx) = watch::channel(false);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        });
        rt.spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .tcp_nodelay(true)
                .add_service(
                    AgentGatewayServer::new(Gateway(leases))
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                }),
        );
        Ok(Floor {
            url,
            open,
            stop,
            rt: Some(rt),
        })
    }

    /// Starts handing out leases, to requests already waiting and to later ones.
    pub fn open(&self) {
        let _ = self.open.send(true);
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_hand_out_every_test_once_in_order_then_none() {
        let (_open, open_rx) = watch::channel(true);
        let spec = crate::simagent::spec("floor", 10);
        let leases = Leases {
            tests: (0..10)
                .map(|i| pb::LeasedTest {
                    index: i,
                    name: spec.tests[i as usize].name.clone(),
                    ..Default::default()
                })
                .collect(),
            per_lease: 4,
            next_test: AtomicUsize::new(0),
            next_lease: AtomicU64::new(0),
            open: open_rx,
        };
        let mut seen = Vec::new();
        let mut ids = Vec::new();
        while let Some(l) = leases.next() {
            ids.push(l.lease_id);
            seen.push(l.tests.iter().map(|t| t.index).collect::<Vec<_>>());
        }
        assert_eq!(seen, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(ids, ["1", "2", "3"]);
        assert!(leases.next().is_none(), "still none after the end");
    }
}
