//! A tiny line-protocol key-value server: the example suite testfleet's README runs. Its integration
//! tests start a real server on loopback and talk to it over TCP.
//!
//! Protocol, one command per line: `SET key value`, `GET key`, `DEL key`, `COUNT`. Replies are one
//! line: `OK`, `VALUE v`, `NONE`, `DELETED n`, `COUNT n`, or `ERR message`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct Store {
    inner: Arc<Mutex<HashMap<String, String>>>,
}

impl Store {
    /// Applies one protocol line and returns the reply line.
    pub fn apply(&self, line: &str) -> String {
        let mut parts = line.trim_end().splitn(3, ' ');
        let mut map = self.inner.lock().expect("store lock");
        match (parts.next(), parts.next(), parts.next()) {
            (Some("SET"), Some(k), Some(v)) => {
                map.insert(k.to_owned(), v.to_owned());
                "OK".into()
            }
            (Some("GET"), Some(k), None) => match map.get(k) {
                Some(v) => format!("VALUE {v}"),
                None => "NONE".into(),
            },
            (Some("DEL"), Some(k), None) => format!("DELETED {}", u8::from(map.remove(k).is_some())),
            (Some("COUNT"), None, None) => format!("COUNT {}", map.len()),
            _ => format!("ERR cannot parse `{}`", line.trim_end()),
        }
    }
}

/// Serves `store` on `listener`, one thread per connection, until the process ends.
pub fn serve(listener: TcpListener, store: Store) {
    for conn in listener.incoming().flatten() {
        let store = store.clone();
        std::thread::spawn(move || handle(conn, store));
    }
}

fn handle(conn: TcpStream, store: Store) {
    // One small reply per request: Nagle's algorithm would hold each one back for a delayed ACK.
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().expect("clone a TCP stream");
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if writeln!(out, "{}", store.apply(&line)).is_err() {
            return;
        }
    }
}

/// Starts a server on a free loopback port in a background thread.
pub fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || serve(listener, Store::default()));
    addr
}

/// A blocking client for the protocol.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        let writer = TcpStream::connect(addr)?;
        writer.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        })
    }

    pub fn call(&mut self, line: &str) -> std::io::Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(reply.trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_then_get() {
        let s = Store::default();
        assert_eq!(s.apply("SET a 1"), "OK");
        assert_eq!(s.apply("GET a"), "VALUE 1");
    }

    #[test]
    fn values_may_contain_spaces() {
        let s = Store::default();
        s.apply("SET greeting hello there");
        assert_eq!(s.apply("GET greeting"), "VALUE hello there");
    }

    #[test]
    fn missing_keys_are_none() {
        assert_eq!(Store::default().apply("GET nope"), "NONE");
    }

    #[test]
    fn delete_reports_whether_it_removed() {
        let s = Store::default();
        s.apply("SET k v");
        assert_eq!(s.apply("DEL k"), "DELETED 1");
        assert_eq!(s.apply("DEL k"), "DELETED 0");
    }

    #[test]
    fn count_follows_writes() {
        let s = Store::default();
        for i in 0..10 {
            s.apply(&format!("SET k{i} v"));
        }
        assert_eq!(s.apply("COUNT"), "COUNT 10");
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        assert!(Store::default().apply("FROB x").starts_with("ERR"));
        assert!(Store::default().apply("").starts_with("ERR"));
    }
}
