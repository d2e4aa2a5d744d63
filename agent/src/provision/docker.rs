//! The Docker provisioner: containers through testcontainers (always removed with an explicit
//! `rm().await`, never by testcontainers' Drop), and inspection, pulls (`pull`), builds, networks
//! and sweeps through bollard.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testcontainers::bollard::Docker;
use testcontainers::bollard::errors::Error as BollardError;
use testcontainers::bollard::models::NetworkCreateRequest;
use testcontainers::bollard::query_parameters::{
    BuildImageOptions, ListContainersOptions, ListImagesOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use testcontainers::core::client::docker_client_instance;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

use testfleet_model::{AgentId, ImageSource, WaitStrategy};

use super::compose::{STACK_PREFIX, Stacks};
use super::pull::{PullDefaults, Pulls, Wanted, with_tag};
use super::{
    ImageRequest, LABEL_AGENT, ProvisionError, Provisioner, StartRequest, Started, SweepReport,
    context, wait,
};

/// Docker answers a ping within this time, or is taken as unavailable.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A service image build that takes longer than this has gone wrong.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

pub struct DockerProvisioner {
    /// Containers this process started and has not removed yet.
    live: Mutex<HashMap<String, ContainerAsync<GenericImage>>>,
    /// One build at a time per image tag.
    builds: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pulls: Pulls,
    stacks: Stacks,
}

impl Default for DockerProvisioner {
    fn default() -> Self {
        Self::with_pulls(PullDefaults::default())
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn engine(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Engine(e.to_string())
}

async fn client() -> Result<Docker, ProvisionError> {
    docker_client_instance()
        .await
        .map_err(|e| ProvisionError::DockerUnavailable(e.to_string()))
}

impl DockerProvisioner {
    pub fn new() -> Self {
        Self::default()
    }

    /// A provisioner whose services pull as `defaults` say when they do not say themselves.
    pub fn with_pulls(defaults: PullDefaults) -> Self {
        DockerProvisioner {
            live: Mutex::default(),
            builds: Mutex::default(),
            pulls: Pulls::new(defaults),
            stacks: Stacks::default(),
        }
    }

    /// The image to run for a service: pulled as its policy says, or built from its context once.
    async fn resolve(&self, req: &ImageRequest<'_>) -> Result<(String, String), ProvisionError> {
        let docker = client().await?;
        match &req.spec.source {
            ImageSource::Image { name, tag } => {
                let reference = format!("{name}:{tag}");
                self.pulls
                    .ensure(&docker, self.wanted(req, &reference), req.on_pull)
                    .await?;
                Ok((name.clone(), tag.clone()))
            }
            ImageSource::Build {
                context,
                dockerfile,
            } => {
                let root = req.workspace.as_deref().ok_or_else(|| {
                    engine(format!(
                        "service `{}` is built from `{context}`, but the run has no workspace",
                        req.spec.name
                    ))
                })?;
                self.build(&docker, req, &root.join(context), dockerfile)
                    .await
            }
            ImageSource::Compose { .. } => Err(engine(format!(
                "compose stack `{}` has no one image",
                req.spec.name
            ))),
        }
    }

    fn wanted<'a>(&self, req: &'a ImageRequest<'_>, reference: &'a str) -> Wanted<'a> {
        Wanted {
            reference,
            policy: req.spec.pull,
            timeout: req.spec.pull_timeout,
            run: &req.run_id,
        }
    }

    async fn build(
        &self,
        docker: &Docker,
        req: &ImageRequest<'_>,
        dir: &Path,
        dockerfile: &str,
    ) -> Result<(String, String), ProvisionError> {
        let service = &req.spec.name;
        let d = dir.to_path_buf();
        let (tar, digest) = tokio::task::spawn_blocking(move || context::pack_context(&d))
            .await
            .map_err(engine)?
            .map_err(|e| ProvisionError::BuildFailed {
                tag: format!("testfleet-build/{service}"),
                context: dir.display().to_string(),
                reason: format!("cannot read the build context: {e}"),
            })?;
        // Named by content alone, so services sharing a context share one build.
        let dir_name: String = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let dir_name = dir_name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let name = format!(
            "testfleet-build/{}",
            if dir_name.is_empty() {
                "context"
            } else {
                dir_name
            }
        );
        let tag = digest[..16].to_owned();
        let reference = format!("{name}:{tag}");
        let lock = self
            .builds
            .lock()
            .await
            .entry(reference.clone())
            .or_default()
            .clone();
        let _one_build = lock.lock().await;
        if docker.inspect_image(&reference).await.is_ok() {
            return Ok((name, tag));
        }
        // Base images follow the service's pull policy, pulled here with its credentials and
        // timeout; the engine would otherwise pull a missing one while building, as it sees fit.
        let dockerfile_text = std::fs::read_to_string(dir.join(dockerfile)).unwrap_or_default();
        for base in context::base_images(&dockerfile_text) {
            if base.contains('$') {
                // Named by a build argument: only the engine knows what it becomes.
                continue;
            }
            let base = with_tag(&base);
            self.pulls
                .ensure(docker, self.wanted(req, &base), req.on_pull)
                .await?;
        }
        let failed = |reason: String| ProvisionError::BuildFailed {
            tag: reference.clone(),
            context: dir.display().to_string(),
            reason,
        };
        tracing::info!(image = %reference, context = %dir.display(), "building service image");
        let options = BuildImageOptions {
            dockerfile: dockerfile.to_owned(),
            t: Some(reference.clone()),
            rm: true,
            forcerm: true,
            labels: Some(HashMap::from([(
                "testfleet.built-from".to_owned(),
                digest.clone(),
            )])),
            ..Default::default()
        };
        let mut progress = docker.build_image(
            options,
            None,
            Some(testcontainers::bollard::body_full(tar.into())),
        );
        let mut tail: Vec<String> = Vec::new();
        let build = async {
            while let Some(item) = progress.next().await {
                let info = item.map_err(|e| failed(e.to_string()))?;
                if let Some(detail) = info.error_detail {
                    let msg = detail.message.unwrap_or_default();
                    return Err(failed(format!("{msg}\n{}", tail.join(""))));
                }
                if let Some(line) = info.stream {
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(BUILD_TIMEOUT, build)
            .await
            .map_err(|_| failed(format!("the build did not finish within {BUILD_TIMEOUT:?}")))??;
        match docker.inspect_image(&reference).await {
            Ok(_) => Ok((name, tag)),
            Err(e) => Err(failed(format!(
                "the build finished but the image is missing: {e}"
            ))),
        }
    }
}

impl DockerProvisioner {
    /// Removes containers carrying all of `labels` that this process does not hold.
    async fn remove_labelled(&self, labels: &BTreeMap<String, String>) {
        let Ok(docker) = client().await else { return };
        let filter = HashMap::from([(
            "label".to_owned(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let found = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        let held: Vec<String> = self.live.lock().await.keys().cloned().collect();
        for id in found
            .into_iter()
            .filter_map(|c| c.id)
            .filter(|id| !held.contains(id))
        {
            let _ = self.remove(&id).await;
        }
    }
}

impl Drop for DockerProvisioner {
    /// Containers still held when the provisioner goes (its agent was torn down without its
    /// shutdown, as when a local run is abandoned) are removed here. testcontainers' own Drop
    /// would block a worker of this runtime on this same runtime, through a client whose
    /// connections this runtime drives: when every worker is dropping at once, nothing is left to
    /// drive them and the process hangs. A thread with a runtime and a client of its own cannot.
    fn drop(&mut self) {
        let live = std::mem::take(self.live.get_mut());
        if live.is_empty() {
            return;
        }
        let ids: Vec<String> = live.keys().cloned().collect();
        // Their own Drop must not run (see above); what they hold goes with the process.
        live.into_values().for_each(std::mem::forget);
        let remover = std::thread::Builder::new()
            .name("container-remover".into())
            .spawn(move || remove_on_a_runtime_of_its_own(&ids));
        if let Ok(remover) = remover {
            let _ = remover.join();
        }
    }
}

/// Removes the containers `ids` with a fresh client on a runtime of this thread's own, within a
/// guard of 30 s; what cannot be removed is left to the next sweep.
fn remove_on_a_runtime_of_its_own(ids: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(docker) = Docker::connect_with_defaults() else {
            tracing::warn!(containers = ?ids, "cannot reach Docker to remove containers; the next sweep will");
            return;
        };
        let remove_all = async {
            for id in ids {
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                if let Err(e) = docker.remove_container(id, Some(opts)).await
                    && !is_not_found(&e)
                {
                    tracing::warn!(container = %id, error = %e, "failed to remove a container");
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), remove_all).await.is_err() {
            tracing::warn!(containers = ?ids, "removing containers took over 30 s; the next sweep will");
        }
    });
}

#[tonic::async_trait]
impl Provisioner for DockerProvisioner {
    async fn status(&self) -> Result<(), String> {
        let docker = client().await.map_err(|e| e.to_string())?;
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot reach Docker at {host}: {e}")),
            Err(_) => Err(format!(
                "Docker at {host} did not answer within {PING_TIMEOUT:?}"
            )),
        }
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProvisionError> {
        let docker = client().await?;
        let req = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        docker.create_network(req).await.map_err(engine)?;
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), ProvisionError> {
        let docker = client().await?;
        match docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn images(&self) -> Vec<String> {
        let Ok(docker) = client().await else {
            return Vec::new();
        };
        let listed = docker.list_images(None::<ListImagesOptions>).await;
        let mut tags: Vec<String> = listed
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t != "<none>:<none>")
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    async fn image(&self, req: &ImageRequest<'_>) -> Result<(), ProvisionError> {
        if matches!(req.spec.source, ImageSource::Compose { .. }) {
            // A stack's images are pulled as it comes up, once its files are rendered.
            return Ok(());
        }
        self.resolve(req).await.map(|_| ())
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProvisionError> {
        let spec = req.image.spec;
        if let ImageSource::Compose {
            files,
            waits,
            pinned,
        } = &spec.source
        {
            let docker = client().await?;
            let stack = super::compose::Stack {
                files,
                waits,
                pinned: *pinned,
            };
            return self.stacks.start(&docker, &self.pulls, &req, stack).await;
        }
        let timeout = spec.startup_timeout;
        let (name, tag) = self.resolve(&req.image).await?;
        // The start is timed from here: pulls and builds are phases of their own.
        let began = Instant::now();
        let mut image = GenericImage::new(name, tag);
        for p in &spec.ports {
            image = image.with_exposed_port(p.tcp());
        }
        image = match &spec.wait {
            WaitStrategy::Log { message } => {
                image.with_wait_for(WaitFor::message_on_either_std(message.as_bytes()))
            }
            WaitStrategy::Healthcheck => image.with_wait_for(WaitFor::healthcheck()),
            _ => image,
        };
        let mut request = image
            .with_startup_timeout(timeout)
            .with_labels(req.labels.clone());
        if !spec.cmd.is_empty() {
            request = request.with_cmd(spec.cmd.clone());
        }
        for (k, v) in &spec.env {
            request = request.with_env_var(k.clone(), v.clone());
        }
        if let Some(net) = &req.network {
            request = request.with_network(net.clone());
        }
        // startup_timeout covers start and readiness; this outer bound also covers creation.
        let container =
            match tokio::time::timeout(timeout + Duration::from_secs(10), request.start()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    return Err(
                        if text.contains("startup timeout") || text.contains("EndOfStream") {
                            ProvisionError::NotReady {
                                timeout,
                                reason: text,
                            }
                        } else {
                            engine(text)
                        },
                    );
                }
                Err(_) => {
                    // Cut off between create and start, the container exists but nobody holds it.
                    self.remove_labelled(&req.labels).await;
                    return Err(ProvisionError::NotReady {
                        timeout,
                        reason: "the container did not start".into(),
                    });
                }
            };
        let id = container.id().to_owned();
        let ready = async {
            let host = container.get_host().await.map_err(engine)?.to_string();
            let mut ports = BTreeMap::new();
            for p in &spec.ports {
                ports.insert(
                    *p,
                    container
                        .get_host_port_ipv4(p.tcp())
                        .await
                        .map_err(engine)?,
                );
            }
            let deadline = began + timeout;
            let probe = match &spec.wait {
                WaitStrategy::Port { port } => {
                    Some(wait::until_port(&format!("{host}:{}", ports[port]), deadline).await)
                }
                WaitStrategy::Http { port, path, status } => Some(
                    wait::until_http(&format!("{host}:{}", ports[port]), path, *status, deadline)
                        .await,
                ),
                _ => None,
            };
            if let Some(Err(reason)) = probe {
                return Err(ProvisionError::NotReady { timeout, reason });
            }
            Ok((host, ports))
        }
        .await;
        match ready {
            Ok((host, ports)) => {
                self.live.lock().await.insert(id.clone(), container);
                Ok(Started {
                    container_id: id,
                    host,
                    ports,
                    stack_ports: BTreeMap::new(),
                    duration: began.elapsed(),
                })
            }
            Err(e) => {
                let _ = container.rm().await;
                Err(e)
            }
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), ProvisionError> {
        if let Some(project) = container_id.strip_prefix(STACK_PREFIX) {
            let docker = client().await?;
            self.stacks.remove(&docker, project).await;
            return Ok(());
        }
        let held = self.live.lock().await.remove(container_id);
        if let Some(c) = held {
            return c.rm().await.map_err(engine);
        }
        let docker = client().await?;
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(container_id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn running(&self, container_id: &str) -> Result<bool, ProvisionError> {
        // A compose stack's containers are the stack's business; its services are checked by
        // their own health, not here.
        if container_id.starts_with(STACK_PREFIX) {
            return Ok(true);
        }
        let docker = client().await?;
        let inspect = docker.inspect_container(container_id, None);
        match tokio::time::timeout(PING_TIMEOUT, inspect).await {
            Ok(Ok(c)) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Ok(Err(e)) if is_not_found(&e) => Ok(false),
            Ok(Err(e)) => Err(engine(e)),
            Err(_) => Err(ProvisionError::Engine(format!(
                "it did not answer within {PING_TIMEOUT:?}"
            ))),
        }
    }

    async fn sweep(&self, agent: &AgentId) -> Result<SweepReport, ProvisionError> {
        let docker = client().await?;
        let filter = HashMap::from([("label".to_owned(), vec![format!("{LABEL_AGENT}={agent}")])]);
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter.clone()),
                ..Default::default()
            }))
            .await
            .map_err(engine)?;
        let mut report = SweepReport::default();
        for c in containers {
            if let Some(id) = c.id {
                self.remove(&id).await?;
                report.containers += 1;
            }
        }
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filter.clone()),
            }))
            .await
            .map_err(engine)?;
        for n in networks {
            if let Some(name) = n.name {
                self.remove_network(&name).await?;
                report.networks += 1;
            }
        }
        // Compose stacks' volumes carry the agent's label too (their containers went above).
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filter),
            }))
            .await
            .map_err(engine)?;
        for v in volumes.volumes.unwrap_or_default() {
            match docker
                .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => report.volumes += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(engine(e)),
            }
        }
        Ok(report)
    }
}
