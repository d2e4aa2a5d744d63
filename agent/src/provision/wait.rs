//! Readiness probes testcontainers does not offer: a published port that really answers, and an
//! HTTP status. Both poll until a deadline.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLL: Duration = Duration::from_millis(100);

/// A TCP port is ready when a connection to it stays open (or yields data). Docker's port proxy
/// accepts connections before the service listens and then closes them at once, so a bare connect
/// proves nothing.
async fn port_answers(addr: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
        Err(_) => Ok(()),             // open and quiet: a server waiting for its client
        Ok(Ok(n)) if n > 0 => Ok(()), // a server that greets
        Ok(Ok(_)) => Err("connection closed at once".into()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

async fn http_status(addr: &str, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

pub async fn until_port(addr: &str, deadline: Instant) -> Result<(), String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        match port_answers(addr).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL).await;
    }
    Err(format!("{addr} never answered (last: {last})"))
}

pub async fn until_http(
    addr: &str,
    path: &str,
    status: u16,
    deadline: Instant,
) -> Result<(), String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_status(addr, path).await {
            Ok(s) if s == status => return Ok(()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL).await;
    }
    Err(format!(
        "GET {path} on {addr} never answered {status} (last: {last})"
    ))
}
