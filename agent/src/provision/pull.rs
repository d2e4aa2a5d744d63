//! Pulls of service images from their registries, as each service's pull policy says. One pull of
//! an image at a time on an agent — leases that want it while it is under way wait for that pull —
//! and across agents on one machine sharing an engine (a lock file per engine and image). A pull
//! has a timeout; its failure is an error that names the image, the registry and the cause, and is
//! remembered for a while so the run's next leases get it at once instead of asking again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testcontainers::bollard::Docker;
use testcontainers::bollard::errors::Error as BollardError;
use testcontainers::bollard::query_parameters::CreateImageOptions;
use testfleet_model::PullPolicy;
use tokio::sync::{Mutex, OnceCell};
use tokio_stream::StreamExt;

use super::credentials::Sources;
use super::{ProvisionError, PullNotes, PullReport};

/// How long a pull may take unless the service or the agent says otherwise.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// A failed pull answers the same run's next leases for this long without asking the registry
/// again: a wrong tag or a refused login does not mend itself between two leases.
const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// What an agent does for services that do not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullDefaults {
    pub policy: PullPolicy,
    pub timeout: Duration,
}

impl Default for PullDefaults {
    fn default() -> Self {
        PullDefaults {
            policy: PullPolicy::Missing,
            timeout: DEFAULT_PULL_TIMEOUT,
        }
    }
}

/// The registry an image reference names, as Docker reads it: the first path component when it
/// looks like a host (has a `.` or a `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// `reference` with the tag Docker assumes when it has none (`latest`); a digest reference
/// (`name@sha256:…`) as it is.
pub fn with_tag(reference: &str) -> String {
    let last = &reference[reference.rfind('/').map_or(0, |i| i + 1)..];
    if reference.contains('@') || last.contains(':') {
        reference.to_owned()
    } else {
        format!("{reference}:latest")
    }
}

/// One image wanted for a run.
pub struct Wanted<'a> {
    /// `name:tag`.
    pub reference: &'a str,
    pub policy: Option<PullPolicy>,
    pub timeout: Option<Duration>,
    pub run: &'a str,
}

/// What this agent remembers of one image's pulls.
#[derive(Default)]
struct Memo {
    /// The run it was last pulled for (`always` pulls once per run).
    pulled_for_run: Option<String>,
    /// The last failure, when, and for which run.
    failure: Option<(Instant, String, ProvisionError)>,
}

pub struct Pulls {
    defaults: PullDefaults,
    credentials: Sources,
    /// Where agents on this machine take turns pulling (`None`: only within this process).
    lock_dir: Option<PathBuf>,
    memos: Mutex<HashMap<String, Arc<Mutex<Memo>>>>,
    engine: OnceCell<String>,
}

impl Pulls {
    pub fn new(defaults: PullDefaults) -> Self {
        Pulls {
            defaults,
            credentials: Sources::from_env(),
            lock_dir: Some(std::env::temp_dir().join("testfleet-pulls")),
            memos: Mutex::default(),
            engine: OnceCell::new(),
        }
    }

    /// Makes `want` present on the engine as its policy says, pulling at most once however many
    /// callers want it at the same time. Each pull made is reported through `on_pull`.
    pub async fn ensure(
        &self,
        docker: &Docker,
        want: Wanted<'_>,
        on_pull: PullNotes<'_>,
    ) -> Result<(), ProvisionError> {
        let policy = want.policy.unwrap_or(self.defaults.policy);
        let reference = want.reference;
        let present = || async { is_present(docker, reference).await };
        match policy {
            PullPolicy::Never => {
                return if present().await? {
                    Ok(())
                } else {
                    Err(ProvisionError::ImageMissing {
                        image: reference.to_owned(),
                        why: "and its pull policy is `never` (load or build it on the agent, or \
                              let the agent pull it with `pull = \"missing\"`)"
                            .into(),
                    })
                };
            }
            PullPolicy::Missing if present().await? => return Ok(()),
            _ => {}
        }
        let memo = self
            .memos
            .lock()
            .await
            .entry(reference.to_owned())
            .or_default()
            .clone();
        let mut memo = memo.lock().await;
        if let Some((at, run, err)) = &memo.failure
            && run == want.run
            && at.elapsed() < FAILURE_MEMORY
        {
            return Err(err.clone());
        }
        // Whoever held the memo before may have pulled it for us.
        let done_already = match policy {
            PullPolicy::Always => memo.pulled_for_run.as_deref() == Some(want.run),
            _ => present().await?,
        };
        if done_already {
            return Ok(());
        }
        let timeout = want.timeout.unwrap_or(self.defaults.timeout);
        let began = Instant::now();
        let registry = registry_of(reference).to_owned();
        let turn = self.machine_turn(docker, reference, timeout).await;
        let result = match turn {
            Ok(mut turn) => {
                // Another agent on this engine may have pulled it since this one looked (while
                // it waited for the turn, or just before): that pull is ours. For `always` it
                // must have been for this run, as the turn's file records.
                let theirs = match policy {
                    PullPolicy::Always => turn.pulled_for().as_deref() == Some(want.run),
                    _ => true,
                };
                if theirs && present().await? {
                    memo.pulled_for_run = Some(want.run.to_owned());
                    return Ok(());
                }
                let left = timeout.saturating_sub(began.elapsed());
                let pulled = self.pull(docker, reference, &registry, left, timeout).await;
                on_pull(PullReport {
                    image: reference.to_owned(),
                    registry: registry.clone(),
                    duration: began.elapsed(),
                    error: pulled.as_ref().err().map(ToString::to_string),
                });
                if pulled.is_ok() {
                    turn.record(want.run);
                }
                pulled
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                memo.pulled_for_run = Some(want.run.to_owned());
                memo.failure = None;
            }
            Err(e) => memo.failure = Some((Instant::now(), want.run.to_owned(), e.clone())),
        }
        result
    }

    async fn pull(
        &self,
        docker: &Docker,
        reference: &str,
        registry: &str,
        left: Duration,
        timeout: Duration,
    ) -> Result<(), ProvisionError> {
        let failed = |cause: String| ProvisionError::PullFailed {
            image: reference.to_owned(),
            registry: registry.to_owned(),
            cause,
        };
        let lookup = {
            let sources = self.credentials.clone();
            let r = registry.to_owned();
            tokio::task::spawn_blocking(move || sources.lookup(&r))
                .await
                .map_err(|e| failed(e.to_string()))?
        };
        let found = lookup.map_err(failed)?;
        let source = found.as_ref().map(|f| f.source.clone());
        // A digest reference is pulled whole; otherwise the tag goes apart from the name.
        let (name, tag) = match reference.rsplit_once(':') {
            Some((name, tag)) if !reference.contains('@') => (name, Some(tag.to_owned())),
            _ => (reference, None),
        };
        let options = CreateImageOptions {
            from_image: Some(name.to_owned()),
            tag,
            ..Default::default()
        };
        tracing::info!(image = %reference, %registry, "pulling image");
        let mut progress = docker.create_image(Some(options), None, found.map(|f| f.credentials));
        let stream = async {
            while let Some(item) = progress.next().await {
                let info = item.map_err(|e| engine_text(&e))?;
                if let Some(detail) = info.error_detail {
                    return Err(detail.message.unwrap_or_default());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(left, stream).await {
            Ok(Ok(())) => {}
            Ok(Err(said)) => return Err(failed(cause(&said, reference, registry, source))),
            Err(_) => {
                return Err(failed(format!(
                    "the pull did not finish within {} s (pull_timeout)",
                    timeout.as_secs_f64()
                )));
            }
        }
        // Some engines end a refused pull's stream without an error: the image tells.
        if is_present(docker, reference).await? {
            Ok(())
        } else {
            Err(failed(
                "the engine ended the pull, but the image is not there".into(),
            ))
        }
    }

    /// Takes this machine's turn to pull `reference` on this engine, waiting while another agent
    /// holds it. Without a lock directory (not writable) each process pulls on its own.
    async fn machine_turn(
        &self,
        docker: &Docker,
        reference: &str,
        timeout: Duration,
    ) -> Result<Turn, ProvisionError> {
        let Some(dir) = &self.lock_dir else {
            return Ok(Turn::alone());
        };
        let engine = self
            .engine
            .get_or_init(|| async {
                match docker.info().await {
                    Ok(info) => info.id.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            })
            .await;
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(format!("{engine}\n{reference}")));
        let path = dir.join(format!("{}.lock", &key[..32]));
        let dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            // Agents of other users on this machine share the directory, as /tmp is shared.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
        })
        .await;
        let Ok(Ok(file)) = opened else {
            return Ok(Turn::alone());
        };
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            return Ok(Turn { file: Some(file) });
        }
        tracing::info!(image = %reference, "another agent on this engine is pulling the image; waiting for it");
        let waiting =
            tokio::task::spawn_blocking(move || flock(&file, libc::LOCK_EX).then_some(file));
        match tokio::time::timeout(timeout, waiting).await {
            Ok(Ok(Some(file))) => Ok(Turn { file: Some(file) }),
            Ok(_) => Ok(Turn::alone()),
            Err(_) => Err(ProvisionError::PullFailed {
                image: reference.to_owned(),
                registry: registry_of(reference).to_owned(),
                cause: format!(
                    "another agent on this engine has been pulling it for over {} s (pull_timeout)",
                    timeout.as_secs_f64()
                ),
            }),
        }
    }
}

/// This process's turn at an image's lock file; released when dropped (the file closes). The
/// file holds the run the image was last pulled for.
struct Turn {
    file: Option<std::fs::File>,
}

impl Turn {
    fn alone() -> Self {
        Turn { file: None }
    }

    /// The run whose pull last took this turn, if any.
    fn pulled_for(&mut self) -> Option<String> {
        use std::io::{Read, Seek};
        let file = self.file.as_mut()?;
        let mut run = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut run).ok()?;
        (!run.is_empty()).then_some(run)
    }

    fn record(&mut self, run: &str) {
        use std::io::{Seek, Write};
        if let Some(file) = self.file.as_mut() {
            // Best effort: without it a later `always` pull of this run pulls again.
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(run.as_bytes()));
        }
    }
}

fn flock(file: &std::fs::File, how: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

async fn is_present(docker: &Docker, reference: &str) -> Result<bool, ProvisionError> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(ProvisionError::DockerUnavailable(e.to_string())),
    }
}

fn engine_text(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// The cause of a failed pull in a user's words, with what the engine said.
fn cause(said: &str, reference: &str, registry: &str, credentials: Option<String>) -> String {
    let lower = said.to_ascii_lowercase();
    let said = said.trim();
    if [
        "unauthorized",
        "authentication required",
        "no basic auth",
        "denied",
        "forbidden",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return match credentials {
            Some(source) => format!(
                "the registry refused the credentials for {registry} from {source} (engine: {said})"
            ),
            None => format!(
                "the registry wants credentials, and there are none for {registry} in \
                 DOCKER_AUTH_CONFIG, $DOCKER_CONFIG/config.json or ~/.docker/config.json \
                 (engine: {said})"
            ),
        };
    }
    if [
        "manifest unknown",
        "not found",
        "name unknown",
        "does not exist",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return format!("the registry has no image `{reference}` (engine: {said})");
    }
    if [
        "connection refused",
        "no such host",
        "dial tcp",
        "i/o timeout",
        "timeout exceeded",
        "awaiting headers",
        "network is unreachable",
        "no route to host",
        "tls",
        "connection reset",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return format!("the registry cannot be reached (engine: {said})");
    }
    format!("the engine said: {said}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_read_from_references_as_docker_reads_them() {
        assert_eq!(registry_of("postgres:16"), "docker.io");
        assert_eq!(registry_of("library/postgres:16"), "docker.io");
        assert_eq!(registry_of("confluentinc/kafka:7"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/team/db:1"), "127.0.0.1:5000");
        assert_eq!(
            registry_of("registry.example/app-db:1.4"),
            "registry.example"
        );
        assert_eq!(registry_of("localhost/db:1"), "localhost");
        assert_eq!(with_tag("debian"), "debian:latest");
        assert_eq!(
            with_tag("127.0.0.1:5000/team/db"),
            "127.0.0.1:5000/team/db:latest"
        );
        assert_eq!(
            with_tag("127.0.0.1:5000/team/db:2"),
            "127.0.0.1:5000/team/db:2"
        );
        assert_eq!(with_tag("db@sha256:ab12"), "db@sha256:ab12");
    }

    #[test]
    fn causes_are_told_apart_from_what_engines_say() {
        let c = |said: &str, creds: Option<&str>| {
            cause(said, "r:1/t/db:2", "r:1", creds.map(str::to_owned))
        };
        // Each text below is what Docker Engine answered for that case against a real registry.
        let missing = c(
            "manifest for r:1/t/db:2 not found: manifest unknown: manifest unknown",
            None,
        );
        assert!(
            missing.starts_with("the registry has no image `r:1/t/db:2`"),
            "{missing}"
        );
        let down = c(
            r#"Get "http://r:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#,
            None,
        );
        assert!(down.starts_with("the registry cannot be reached"), "{down}");
        let anonymous = c(
            r#"Head "http://r:1/v2/t/db/manifests/2": no basic auth credentials"#,
            None,
        );
        assert!(
            anonymous.contains("there are none for r:1 in DOCKER_AUTH_CONFIG"),
            "{anonymous}"
        );
        let refused = c(
            r#"Head "http://r:1/v2/t/db/manifests/2": unauthorized: authentication required"#,
            Some("/home/u/.docker/config.json"),
        );
        assert!(
            refused.contains("refused the credentials for r:1 from /home/u/.docker/config.json"),
            "{refused}"
        );
        assert!(c("something new", None).contains("something new"));
    }
}
