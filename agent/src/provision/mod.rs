//! Services for tests: the [`Provisioner`] trait (what an agent needs from a container engine), its
//! Docker implementation, and the [`ServicePool`] that applies scopes and guarantees cleanup. The
//! agent is its own reaper: everything it creates carries its labels and is swept by them.

mod compose;
mod context;
mod credentials;
mod docker;
mod pool;
mod pull;
mod wait;

pub use docker::DockerProvisioner;
pub use pool::{LeaseCtx, Prepared, ServicePool};
pub use pull::{DEFAULT_PULL_TIMEOUT, PullDefaults, registry_of};

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
    #[error("image `{image}` is not on this agent's Docker engine {why}")]
    ImageMissing { image: String, why: String },
    #[error("cannot pull image `{image}` from registry {registry}: {cause}")]
    PullFailed {
        image: String,
        registry: String,
        cause: String,
    },
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

/// A pull a provisioner made (or tried), reported as it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    /// `name:tag`.
    pub image: String,
    pub registry: String,
    pub duration: Duration,
    /// Why it failed; `None` when it did not.
    pub error: Option<String>,
}

/// Where a provisioner reports its pulls.
pub type PullNotes<'a> = &'a (dyn Fn(PullReport) + Send + Sync);

/// What making a service's image present needs.
pub struct ImageRequest<'a> {
    pub spec: &'a ServiceSpec,
    /// The workspace root that build contexts are relative to.
    pub workspace: Option<PathBuf>,
    /// The run it is for (`pull = "always"` pulls once per run).
    pub run_id: String,
    pub on_pull: PullNotes<'a>,
}

/// What a container start needs.
pub struct StartRequest<'a> {
    pub image: ImageRequest<'a>,
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
    /// A compose stack's (compose service, container port) → published host port.
    pub stack_ports: BTreeMap<(String, u16), u16>,
    pub duration: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// A container engine as the agent uses it. Implementations pull only as a service's pull policy
/// says and must make `remove` and `sweep` idempotent.
#[tonic::async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// `Ok` when containers can be started here, otherwise why not.
    async fn status(&self) -> Result<(), String>;
    /// The tagged images (`name:tag`) the engine holds, as far as it can tell.
    async fn images(&self) -> Vec<String> {
        Vec::new()
    }
    /// Makes a service's image present as its pull policy says (pulled, or built with its base
    /// images pulled the same way), ahead of any start; `start` does the same when it must.
    async fn image(&self, _req: &ImageRequest<'_>) -> Result<(), ProvisionError> {
        Ok(())
    }
    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProvisionError>;
    async fn remove_network(&self, name: &str) -> Result<(), ProvisionError>;
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProvisionError>;
    async fn remove(&self, container_id: &str) -> Result<(), ProvisionError>;
    /// Whether a started container still runs (`Ok(false)` when it is gone); `Ok(true)` where the
    /// engine cannot tell.
    async fn running(&self, _container_id: &str) -> Result<bool, ProvisionError> {
        Ok(true)
    }
    /// Removes every container and network labelled as this agent's.
    async fn sweep(&self, agent: &AgentId) -> Result<SweepReport, ProvisionError>;
}
