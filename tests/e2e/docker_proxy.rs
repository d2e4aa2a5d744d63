//! A proxy in front of the machine's Docker socket, for an agent to use as its `DOCKER_HOST`:
//! closing it is the engine going away as the agent sees it (its connections cut, new ones
//! refused), without disturbing the real engine every other test uses.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const ENGINE: &str = "/var/run/docker.sock";

pub struct DockerProxy {
    path: PathBuf,
    open: Arc<AtomicBool>,
    /// Both ends of every connection made, to cut them when the proxy closes.
    conns: Arc<Mutex<Vec<UnixStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl DockerProxy {
    /// A proxy listening at `path`.
    pub fn open(path: &Path) -> Self {
        let mut p = DockerProxy {
            path: path.to_owned(),
            open: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            acceptor: None,
        };
        p.reopen();
        p
    }

    /// `DOCKER_HOST` for it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Listens again (the engine is back).
    pub fn reopen(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let (open, conns) = (self.open.clone(), self.conns.clone());
        self.acceptor = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if !open.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(engine) = UnixStream::connect(ENGINE) else {
                    continue;
                };
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(engine.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), engine.try_clone().unwrap());
                pipe(engine, client);
            }
        }));
    }

    /// Stops listening and cuts every connection, as an engine that stops does.
    pub fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        // Wakes the acceptor, which sees it is closed.
        let _ = UnixStream::connect(&self.path);
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.close();
        }
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes.
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
