//! Services for tests: the [`Provisioner`] trait (what an agent needs from a container engine), its
//! Docker implementation, and the [`ServicePool`] that applies scopes and guarantees cleanup. The
//! agent is its own reaper: everything it creates carries its labels and is swept by them.

mod context;
mod docker;
mod pool;
mod wait;

pub use docker::DockerProvisioner;
pub use pool::{LeaseCtx, Prepared, ServicePool};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use testfleet_model::{AgentId, ServiceSpec};

pub const LABEL_AGENT: &str = "testfleet.agent";
pub const LABEL_RUN: &str = "testfleet.run";
pub const LABEL_LEASE: &str = "testfleet.lease";
pub const LABEL_SCOPE: &str = "testfleet.scope";
pub const LABEL_SERVICE: &str = "testfleet.service";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProvisionError {
    #[error("Docker is unavailable: {0}")]
    DockerUnavailable(String),
    #[error(
        "image `{0}` is not present on this agent's Docker engine (testfleet never pulls; build or load it first)"
    )]
    ImageMissing(String),
    #[error("building image `{tag}` from `{context}` failed: {reason}")]
    BuildFailed {
        tag: String,
        context: String,
        reason: String,
    },
    #[error("container did not become ready within {timeout:?}: {reason}")]
    NotReady { timeout: Duration, reason: String },
    #[error("{0}")]
    Engine(String),
}

/// What a container start needs.
pub struct StartRequest<'a> {
    pub spec: &'a ServiceSpec,
    /// The workspace root that build contexts are relative to.
    pub workspace: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Started {
    pub container_id: String,
    /// The host that reaches the published ports.
    pub host: String,
    /// Container port → published host port.
    pub ports: BTreeMap<u16, u16>,
    pub duration: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub containers: usize,
    pub networks: usize,
}

/// A container engine as the agent uses it. Implementations must never pull from a registry and
/// must make `remove` and `sweep` idempotent.
#[tonic::async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// `Ok` when containers can be started here, otherwise why not.
    async fn status(&self) -> Result<(), String>;
    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProvisionError>;
    async fn remove_network(&self, name: &str) -> Result<(), ProvisionError>;
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProvisionError>;
    async fn remove(&self, container_id: &str) -> Result<(), ProvisionError>;
    /// Removes every container and network labelled as this agent's.
    async fn sweep(&self, agent: &AgentId) -> Result<SweepReport, ProvisionError>;
}
