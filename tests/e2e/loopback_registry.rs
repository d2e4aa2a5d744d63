//! A real container registry on a loopback port for the pull tests: Debian's `docker-registry`
//! (the CNCF distribution server that Docker Hub runs), open or behind htpasswd, with its access
//! log read so that tests can count the pulls it served.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use crate::support::{GUARD, docker, tool_or_skip};

/// The user and password of the htpasswd-protected registries.
pub const USER: &str = "fleet";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    access: Arc<Mutex<Vec<String>>>,
}

/// Whether the registry server and htpasswd are installed; as [`tool_or_skip`].
pub fn registry_or_skip(test: &str) -> bool {
    tool_or_skip(
        "docker-registry",
        &["--version"],
        "apt-get install docker-registry",
        test,
    ) && tool_or_skip(
        "htpasswd",
        &["-nbB", "u", "p"],
        "apt-get install apache2-utils",
        test,
    )
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// A registry keeping its images in `storage`; with `htpasswd`, only its users may pull.
    /// Two registries on one storage serve the same images (one open to push to, one protected).
    pub fn start(dir: &Path, storage: &Path, htpasswd: Option<&Path>) -> Registry {
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let auth = htpasswd.map_or(String::new(), |p| {
            format!(
                "auth: {{ htpasswd: {{ realm: tests, path: {} }} }}\n",
                p.display()
            )
        });
        let config = dir.join(format!("registry-{port}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: info }}\n\
                 storage: {{ filesystem: {{ rootdirectory: {} }} }}\n\
                 http: {{ addr: \"{host}\" }}\n{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry starts");
        // Access log lines come on stdout, its own log (with "listening on") on stderr.
        let access = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let lines = access.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let want = format!("listening on {host}");
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&want) {
                    let _ = ready_tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = ready_tx.send(Err(said.join("\n")));
        });
        match ready_rx.recv_timeout(GUARD) {
            Ok(Ok(())) => {}
            Ok(Err(said)) => panic!("the registry on {host} ended before it listened:\n{said}"),
            Err(_) => panic!("the registry on {host} did not listen within {GUARD:?}"),
        }
        Registry {
            child,
            host,
            access,
        }
    }

    /// Two registries on one storage in `dir`: an open one to push to, and one that only
    /// [`USER`] with [`PASSWORD`] may pull from.
    pub fn pair(dir: &Path) -> (Registry, Registry) {
        let storage = dir.join("storage");
        let open = Registry::start(dir, &storage, None);
        let closed = Registry::start(dir, &storage, Some(&Registry::htpasswd(dir)));
        (open, closed)
    }

    /// An htpasswd file for [`USER`] and [`PASSWORD`] in `dir`.
    fn htpasswd(dir: &Path) -> PathBuf {
        let out = Command::new("htpasswd")
            .args(["-nbB", USER, PASSWORD])
            .output()
            .expect("htpasswd runs");
        assert!(out.status.success());
        let path = dir.join("htpasswd");
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    /// Pushes the local image `local` here as `repo:tag`, then removes that tag from the engine,
    /// so that only the registry has it under this name. Returns the full reference.
    pub fn push(&self, local: &str, repo: &str, tag: &str) -> String {
        let reference = format!("{}/{repo}:{tag}", self.host);
        docker(&["tag", local, &reference]);
        docker(&["push", "-q", &reference]);
        docker(&["rmi", &reference]);
        reference
    }

    /// Pulls the registry served of `repo:tag`: requests for its manifest by tag (Docker asks
    /// once per pull, with HEAD or GET), counted from the access log.
    pub fn pulls_of(&self, repo: &str, tag: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{tag} ");
        self.access
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains(&format!("\"HEAD {path}")) || l.contains(&format!("\"GET {path}"))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes `reference` from the engine if it is there.
pub fn remove_image(reference: &str) {
    let _ = Command::new("docker")
        .args(["rmi", "-f", reference])
        .output();
}

/// Whether the engine holds `reference`.
pub fn engine_has(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The fixture server's image (`FROM scratch` and a static binary), built once per test process;
/// the source of what the tests push. Its tag stays on the engine for the next run to rebuild.
pub fn fixture_server_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/services");
            let status = Command::new("sh")
                .arg("docker/build-server.sh")
                .current_dir(&suite)
                .status()
                .expect("sh runs");
            assert!(status.success(), "building the fixture server failed");
            let tag = "testfleet-test/registry-source:latest".to_owned();
            let ctx = suite.join("docker");
            docker(&["build", "-q", "-t", &tag, ctx.to_str().unwrap()]);
            tag
        })
        .clone()
}
