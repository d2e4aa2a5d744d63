//! A TCP proxy in front of a coordinator that counts the bytes going each way: what a client
//! uploads or an agent downloads, as the network carries it (gRPC's framing included), whatever
//! the bundle's format.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes through the proxy so far, each way.
#[derive(Clone, Default)]
pub struct Counts {
    to_upstream: Arc<AtomicU64>,
    from_upstream: Arc<AtomicU64>,
}

impl Counts {
    /// (sent to the coordinator, received from it).
    pub fn get(&self) -> (u64, u64) {
        (
            self.to_upstream.load(Ordering::Relaxed),
            self.from_upstream.load(Ordering::Relaxed),
        )
    }
}

/// Listens on a loopback port of its own, forwarding every connection to `upstream`; returns
/// the URL to use instead of the coordinator's, and the counts. Runs on `runtime` until it ends.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
) -> anyhow::Result<(String, Counts)> {
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = Counts::default();
    let c = counts.clone();
    runtime.spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                continue; // the coordinator is gone: the connection is refused by closing it
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pipe(in_read, out_write, c.to_upstream.clone()));
            tokio::spawn(pipe(out_read, in_write, c.from_upstream.clone()));
        }
    });
    Ok((url, counts))
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
}
