//! The testfleet agent: holds one session with the coordinator, runs the tests it is leased (one
//! process each), and streams results back. [`run`] takes its configuration and a shutdown future,
//! so tests and the CLI's local mode embed it exactly as the `agent` command runs it.

mod bundle_archive;
pub mod bundle_cache;
mod bundle_error;
pub mod bundle_files;
mod bundle_manifest;
pub mod capture;
pub mod disk_room;
pub mod executor;
pub mod guard;
mod job;
pub mod orphans;
pub mod provision;
pub mod runners;
pub mod sandbox;
mod session;
mod test_env;
mod trace;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use testfleet_bundle::layout::LinkMode;
use testfleet_model::AgentId;

use provision::{Provisioner, ServicePool};
use tokio::sync::watch;
use worker::Worker;

pub use session::SessionEnd;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:7420`.
    pub coordinator: String,
    pub agent_id: AgentId,
    /// Tests run at once.
    pub slots: u32,
    /// Bundle cache and scratch space; one per agent.
    pub work_dir: PathBuf,
    /// How long a cached bundle no lease needs is kept; `None` keeps every bundle.
    pub bundle_retention: Option<Duration>,
    pub labels: HashMap<String, String>,
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Kills the running tests if the agent dies (see [`guard`]); off by default.
    pub guard: guard::Guard,
    /// The agent token and TLS settings it connects with.
    pub security: testfleet_security::ClientSecurity,
    /// How remote runs' tests get their private namespace (see [`sandbox`]); off by default.
    pub sandbox: sandbox::Launcher,
    /// Free space on the work dir's filesystem below which the agent takes no work.
    pub min_free_bytes: u64,
}

impl AgentConfig {
    pub fn new(coordinator: String, agent_id: AgentId, slots: u32, work_dir: PathBuf) -> Self {
        AgentConfig {
            coordinator,
            agent_id,
            slots,
            work_dir,
            bundle_retention: Some(bundle_cache::DEFAULT_RETENTION),
            labels: HashMap::new(),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            guard: guard::Guard::default(),
            security: Default::default(),
            sandbox: sandbox::Launcher::off("this agent was not given a sandbox helper"),
            min_free_bytes: disk_room::DEFAULT_MIN_FREE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid coordinator URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("failed to prepare the work dir `{}`: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the coordinator refused agent {agent}: {reason}")]
    Refused { agent: AgentId, reason: String },
}

/// What the agent can offer tests that need services.
pub(crate) struct Services {
    pub pool: Option<Arc<ServicePool>>,
    /// Why there is no pool, in words (empty when there is one).
    pub status: String,
}

async fn services(config: &AgentConfig, provisioner: Option<Arc<dyn Provisioner>>) -> Services {
    let Some(prov) = provisioner else {
        return Services {
            pool: None,
            status: "services are disabled on this agent (--no-docker)".into(),
        };
    };
    match prov.status().await {
        Ok(()) => {
            let pool = Arc::new(ServicePool::new(prov, config.agent_id.clone()));
            // Whatever a killed earlier run of this agent left behind goes first.
            if let Some(r) = pool.sweep().await
                && (r.containers > 0 || r.networks > 0 || r.volumes > 0)
            {
                tracing::warn!(
                    containers = r.containers,
                    networks = r.networks,
                    volumes = r.volumes,
                    "removed leftovers of an earlier run of this agent"
                );
            }
            Services {
                pool: Some(pool),
                status: String::new(),
            }
        }
        Err(reason) => {
            tracing::warn!(%reason, "Docker is unavailable: this agent will not take tests that need services");
            Services {
                pool: None,
                status: reason,
            }
        }
    }
}

/// How the agent is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Finish the running tests, give back the rest, remove containers, then exit.
    Drain,
    /// Stop the running tests too.
    Now,
}

/// Runs the agent until `stop` says so, reconnecting with backoff whenever the session breaks. At
/// the end every container the agent started is removed. `provisioner` is `None` on agents that
/// must not start services.
pub async fn run(
    mut config: AgentConfig,
    provisioner: Option<Arc<dyn Provisioner>>,
    stop: watch::Receiver<Stop>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.work_dir).map_err(|source| AgentError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    // One spelling of the work dir, however it was given: tests carry it, and a restart finds
    // its leftovers by it.
    if let Ok(dir) = config.work_dir.canonicalize() {
        config.work_dir = dir;
    }
    // Tests a killed earlier run of this agent left running go before new ones start.
    let orphans = orphans::sweep(config.agent_id.as_str(), &config.work_dir);
    if orphans > 0 {
        tracing::warn!(
            processes = orphans,
            "killed tests an earlier run of this agent left running"
        );
    }
    let services = services(&config, provisioner).await;
    let watching = services.pool.as_ref().map(|p| p.watch_engine());
    let result = run_sessions(&config, &services, stop).await;
    if let Some(w) = watching {
        w.abort();
    }
    if let Some(pool) = &services.pool
        && let Some(r) = pool.shutdown().await
    {
        tracing::info!(
            containers = r.containers,
            networks = r.networks,
            volumes = r.volumes,
            "services removed"
        );
    }
    result
}

async fn run_sessions(
    config: &AgentConfig,
    services: &Services,
    mut stop: watch::Receiver<Stop>,
) -> Result<(), AgentError> {
    let endpoint = session::endpoint(config)?;
    // Under a sandbox tests write to overlays, never to the bundle: its files can be links to
    // the cache's. Without one they write in the bundle itself, so each layout has its own.
    let link = if config.sandbox.available() {
        LinkMode::Hardlink
    } else {
        LinkMode::CloneOrCopy
    };
    let cache = bundle_cache::BundleCache::new(
        config.work_dir.join("bundles"),
        bundle_files::FileCache::new(config.work_dir.join("bundle-files")),
        link,
    );
    let _collector = config
        .bundle_retention
        .map(|r| bundle_cache::collect_periodically(cache.clone(), r));
    let sandboxes = sandbox::RunSandboxes::new(
        config.sandbox.clone(),
        config
            .work_dir
            .join("sandboxes")
            .join(config.agent_id.as_str()),
    );
    let room = disk_room::DiskRoom::new(config.work_dir.clone(), config.min_free_bytes);
    let mut w = Worker::new(config.slots, services, room);
    let mut delay = Duration::from_millis(100);
    loop {
        match session::run(config, &endpoint, &cache, &sandboxes, &mut w, &mut stop).await {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Refused(reason) => {
                return Err(AgentError::Refused {
                    agent: config.agent_id.clone(),
                    reason,
                });
            }
            SessionEnd::Broken {
                reason,
                was_welcomed,
            } => {
                let state = *stop.borrow();
                if state == Stop::Now {
                    w.cancel_all();
                    // Let the stopped tests' process groups be killed before the agent goes.
                    while w.running > 0 {
                        match tokio::time::timeout(Duration::from_secs(10), w.done_rx.recv()).await
                        {
                            Ok(Some((slots, results))) => {
                                w.job_done(slots);
                                for (key, result) in results {
                                    w.finished(key, result);
                                }
                            }
                            _ => break,
                        }
                    }
                }
                if state != Stop::Running && w.idle() {
                    if !w.unacked.is_empty() {
                        tracing::warn!(
                            results = w.unacked.len(),
                            "stopping with results the coordinator never acknowledged"
                        );
                    }
                    return Ok(());
                }
                if was_welcomed {
                    delay = Duration::from_millis(100);
                }
                let jittered = delay.mul_f64(0.8 + 0.4 * fastrand::f64());
                tracing::warn!(
                    coordinator = %config.coordinator,
                    %reason,
                    running = w.running,
                    "session with the coordinator ended; reconnecting in {} ms",
                    jittered.as_millis()
                );
                tokio::select! {
                    () = tokio::time::sleep(jittered) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(config.max_backoff);
            }
        }
    }
}
