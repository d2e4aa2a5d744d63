//! The embedded default: a coordinator and N agents inside this process, talking over real loopback
//! gRPC exactly as a fleet would, with history in a local data dir that persists between runs.

use std::path::Path;
use std::sync::Arc;

use testfleet_agent::provision::{DockerProvisioner, Provisioner};
use testfleet_agent::{AgentConfig, Stop};
use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_security::{ClientSecurity, Secret, TokenSet, generate_token};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{CliError, CliResult};

/// Local agents are named after their data dir: stable across runs in one workspace (so a killed
/// run's containers are swept by the next), distinct between workspaces (so two local runs on one
/// machine never sweep each other's). Only one process holds a data dir at a time.
fn local_agent_prefix(data_dir: &Path) -> String {
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    format!(
        "local-{:08x}",
        crate::process::short_hash(path.as_os_str().as_encoded_bytes())
    )
}

/// A client token and an agent token, fresh for one local fleet, and the set that accepts them.
fn session_tokens() -> CliResult<(Secret, Secret, TokenSet)> {
    let make = || -> CliResult<Secret> {
        let t = generate_token().map_err(|e| CliError::Internal(e.into()))?;
        Secret::new(&t, "a generated token").map_err(|e| CliError::Internal(e.into()))
    };
    let (client, agent) = (make()?, make()?);
    let set = TokenSet::parse(
        &format!(
            "client local {}\nagent local-agents {}\n",
            client.expose(),
            agent.expose()
        ),
        "the local fleet's tokens",
    )
    .map_err(|e| CliError::Internal(e.into()))?;
    Ok((client, agent, set))
}

pub struct LocalFleet {
    pub url: String,
    /// What this process's client presents: a token made for this fleet alone.
    pub security: ClientSecurity,
    agents: Vec<(tokio::sync::watch::Sender<Stop>, JoinHandle<()>)>,
    coordinator: (oneshot::Sender<()>, JoinHandle<()>),
}

impl LocalFleet {
    /// `docker`: whether the local agents may start services.
    pub async fn start(data_dir: &Path, agents: u32, slots: u32, docker: bool) -> CliResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            CliError::Server(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        // The data dir sits in the user's workspace: keep it out of version control on its own.
        let ignore = data_dir.join(".gitignore");
        if !ignore.exists() {
            let _ = std::fs::write(&ignore, "*\n");
        }
        let store = SledStore::open(data_dir).map_err(|e| {
            CliError::Server(format!(
                "{e} (another `testfleet run` on this workspace may be running)"
            ))
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Server(format!("cannot listen on loopback: {e}")))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| CliError::Internal(e.into()))?
        );
        // Other users of this machine can reach a loopback port too: the embedded coordinator
        // takes only tokens made here and now, one for the client, one for the agents.
        let (client_token, agent_token, tokens) = session_tokens()?;
        let mut config = CoordinatorConfig::new(data_dir);
        config.tokens = Some(tokens);
        config.scheduler.default_retries = 0;
        // Local agents are all alike and connected from the start: no one else is coming.
        config.scheduler.service_grace = std::time::Duration::ZERO;
        let (stop, stopped) = oneshot::channel::<()>();
        let coordinator = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) =
                testfleet_coordinator::serve(listener, config, Arc::new(store), shutdown).await
            {
                tracing::error!(error = %e, "local coordinator failed");
            }
        });
        let mut handles = Vec::new();
        let prefix = local_agent_prefix(data_dir);
        // One guard for all local agents: if this process is killed, their tests go with it.
        let guard = crate::process::start_guard();
        for i in 1..=agents {
            let name = format!("{prefix}-{i}");
            let id = name.parse().expect("a valid agent id");
            let mut cfg =
                AgentConfig::new(url.clone(), id, slots, data_dir.join("agents").join(&name));
            cfg.guard = guard.clone();
            cfg.security = ClientSecurity {
                token: Some(agent_token.clone()),
                tls: None,
            };
            let (stop, stopped) = tokio::sync::watch::channel(Stop::Running);
            let handle = tokio::spawn(async move {
                let provisioner: Option<Arc<dyn Provisioner>> =
                    docker.then(|| Arc::new(DockerProvisioner::new()) as Arc<dyn Provisioner>);
                if let Err(e) = testfleet_agent::run(cfg, provisioner, stopped).await {
                    tracing::error!(error = %e, "local agent failed");
                }
            });
            handles.push((stop, handle));
        }
        Ok(LocalFleet {
            url,
            security: ClientSecurity {
                token: Some(client_token),
                tls: None,
            },
            agents: handles,
            coordinator: (stop, coordinator),
        })
    }

    /// Stops the agents (killing any test still running), then the coordinator, which writes the
    /// last of the history before this returns.
    pub async fn shutdown(self) {
        let mut joins = Vec::new();
        for (stop, handle) in self.agents {
            let _ = stop.send(Stop::Now);
            joins.push(handle);
        }
        for j in joins {
            let _ = j.await;
        }
        let _ = self.coordinator.0.send(());
        let _ = self.coordinator.1.await;
    }
}
