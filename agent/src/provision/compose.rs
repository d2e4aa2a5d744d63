//! Compose stacks, run with the compose tool users already have (`docker compose`, else
//! `docker-compose`). testcontainers' compose module needs the `docker compose` plugin or pulls a
//! `docker` CLI image from Docker Hub, and it cannot relabel a stack or move its host ports, so the
//! stack goes through the tool here: `config` renders the users' files as compose merges and
//! interpolates them, and the rendered file is rewritten before `up`:
//!
//! - every container, network and volume carries the agent's labels, so the sweep finds them;
//! - published ports lose their host side (the engine picks free ones), so two agents on one
//!   engine never collide, also when a file pins `8080:80`; `container_name` goes for the same
//!   reason;
//! - each scope instance is a project of its own (`tf-<agent>-<scope>-<random>`).
//!
//! Images of services without `build` are pulled first under the stack's pull policy. Healthchecks
//! in the files are waited for, as are the manifest's per-service waits. `down -v` removes the
//! stack and its volumes at the end of its scope.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_yaml::{Mapping, Value};
use testcontainers::bollard::Docker;
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    LogsOptions, RemoveContainerOptions,
};
use testfleet_model::WaitStrategy;
use tokio::sync::{Mutex, OnceCell};
use tokio_stream::StreamExt;

use super::pull::{Pulls, Wanted, with_tag};
use super::{LABEL_AGENT, LABEL_SCOPE, ProvisionError, StartRequest, Started, wait};

/// The label compose puts on everything of a project.
const PROJECT_LABEL: &str = "com.docker.compose.project";
const SERVICE_LABEL: &str = "com.docker.compose.service";
/// `down` that takes longer has hung (the engine's calls have their own limits).
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// What a started stack's `Started::container_id` begins with.
pub const STACK_PREFIX: &str = "compose:";

/// Which compose tool this machine has.
#[derive(Clone, Copy, Debug)]
enum Tool {
    /// `docker compose` (v2, the CLI plugin).
    Plugin,
    /// `docker-compose` (v1, or v2 installed standalone).
    Standalone,
}

impl Tool {
    fn command(self) -> tokio::process::Command {
        match self {
            Tool::Plugin => {
                let mut c = tokio::process::Command::new("docker");
                c.arg("compose");
                c
            }
            Tool::Standalone => tokio::process::Command::new("docker-compose"),
        }
    }

    async fn detect() -> Result<Tool, String> {
        for tool in [Tool::Plugin, Tool::Standalone] {
            let ok = tool
                .command()
                .arg("version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(tool);
            }
        }
        Err("this agent has no compose tool (`docker compose` or `docker-compose`)".into())
    }
}

/// A stack that is up: how to reach it again with its tool.
struct Live {
    tool: Tool,
    /// Holds the rewritten compose file.
    _dir: tempfile::TempDir,
    file: PathBuf,
    project_dir: PathBuf,
}

/// A stack as its spec describes it.
pub struct Stack<'a> {
    pub files: &'a [String],
    pub waits: &'a BTreeMap<String, WaitStrategy>,
    /// Host ports and container names as the files pin them.
    pub pinned: bool,
}

#[derive(Default)]
pub struct Stacks {
    tool: OnceCell<Result<Tool, String>>,
    live: Mutex<HashMap<String, Live>>,
}

fn failed(stack: &str, why: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Engine(format!("compose stack `{stack}`: {why}"))
}

/// When a stack must be ready by, and the `startup_timeout` that set it (for messages).
#[derive(Clone, Copy)]
struct Limit {
    at: Instant,
    timeout: Duration,
}

/// The host that reaches ports the engine publishes.
fn published_host() -> String {
    let from_env = std::env::var("DOCKER_HOST").ok().and_then(|h| {
        let rest = h
            .strip_prefix("tcp://")
            .or_else(|| h.strip_prefix("http://"))
            .or_else(|| h.strip_prefix("https://"))?;
        Some(
            rest.rsplit_once(':')
                .map_or(rest, |(host, _)| host)
                .to_owned(),
        )
    });
    // IPv4, as the ports read below are: "localhost" may resolve to ::1.
    from_env.unwrap_or_else(|| "127.0.0.1".into())
}

impl Stacks {
    /// Brings a stack up for `req` and waits until it is ready; on failure nothing of it is left.
    pub async fn start(
        &self,
        docker: &Docker,
        pulls: &Pulls,
        req: &StartRequest<'_>,
        stack: Stack<'_>,
    ) -> Result<Started, ProvisionError> {
        let Stack {
            files,
            waits,
            pinned,
        } = stack;
        let spec = req.image.spec;
        let name = &spec.name;
        let tool = self
            .tool
            .get_or_init(Tool::detect)
            .await
            .clone()
            .map_err(|e| failed(name, e))?;
        let root = req.image.workspace.as_deref().ok_or_else(|| {
            failed(
                name,
                "the run has no workspace to find the compose files in",
            )
        })?;
        let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(failed(
                name,
                format!("no compose file {}", missing.display()),
            ));
        }
        let project_dir = paths[0].parent().unwrap_or(root).to_path_buf();
        let mut config = tool.command();
        config.arg("--project-directory").arg(&project_dir);
        for p in &paths {
            config.arg("-f").arg(p);
        }
        let rendered = tokio::time::timeout(
            spec.startup_timeout,
            run(config.arg("config"), name, "config"),
        )
        .await
        .map_err(|_| {
            failed(
                name,
                "`config` did not end within the stack's startup_timeout",
            )
        })??;
        let mut doc: Value = serde_yaml::from_str(&rendered)
            .map_err(|e| failed(name, format!("cannot read what `config` rendered: {e}")))?;
        let images = rewrite(&mut doc, &req.labels, pinned).map_err(|e| failed(name, e))?;
        for service in waits.keys() {
            if doc["services"].get(service).is_none() {
                return Err(failed(
                    name,
                    format!("`wait` names `{service}`, which the compose files do not define"),
                ));
            }
        }
        for image in &images {
            let reference = with_tag(image);
            let want = Wanted {
                reference: &reference,
                policy: spec.pull,
                timeout: spec.pull_timeout,
                run: &req.image.run_id,
            };
            pulls.ensure(docker, want, req.image.on_pull).await?;
        }
        let dir = tempfile::tempdir().map_err(|e| failed(name, e))?;
        let file = dir.path().join("compose.testfleet.yaml");
        let text = serde_yaml::to_string(&doc).map_err(|e| failed(name, e))?;
        std::fs::write(&file, text).map_err(|e| failed(name, e))?;
        let project = project_name(req);
        let live = Live {
            tool,
            _dir: dir,
            file,
            project_dir,
        };
        let began = Instant::now();
        let deadline = began + spec.startup_timeout;
        let up = async {
            run(live.command(&project).args(["up", "-d"]), name, "up").await?;
            let limit = Limit {
                at: deadline,
                timeout: spec.startup_timeout,
            };
            self.ready(docker, name, &project, waits, limit).await
        };
        let result = tokio::time::timeout(spec.startup_timeout, up).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(ProvisionError::NotReady {
                timeout: spec.startup_timeout,
                reason: format!("compose stack `{name}` was not up and ready in time"),
            }),
        };
        match result {
            Ok(stack_ports) => {
                self.live.lock().await.insert(project.clone(), live);
                Ok(Started {
                    container_id: format!("{STACK_PREFIX}{project}"),
                    host: published_host(),
                    ports: BTreeMap::new(),
                    stack_ports,
                    duration: began.elapsed(),
                })
            }
            Err(e) => {
                take_down(docker, Some(&live), &project).await;
                Err(e)
            }
        }
    }

    /// Waits for every container's healthcheck and the manifest's waits; returns the published
    /// ports by (compose service, container port).
    async fn ready(
        &self,
        docker: &Docker,
        name: &str,
        project: &str,
        waits: &BTreeMap<String, WaitStrategy>,
        limit: Limit,
    ) -> Result<BTreeMap<(String, u16), u16>, ProvisionError> {
        let deadline = limit.at;
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{PROJECT_LABEL}={project}")],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| failed(name, e))?;
        let host = published_host();
        let mut ports = BTreeMap::new();
        let mut by_service: BTreeMap<String, String> = BTreeMap::new();
        for c in containers {
            let (Some(id), Some(service)) = (
                c.id.clone(),
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            // IPv4 first: an engine may publish a port on different host ports for IPv4 and
            // IPv6 (Docker 20.10 does), and the published host is reached over IPv4.
            let mut published = c.ports.unwrap_or_default();
            published.sort_by_key(|p| p.ip.as_deref().is_some_and(|ip| ip.contains('.')));
            for p in published {
                if let Some(public) = p.public_port {
                    ports.insert((service.clone(), p.private_port), public);
                }
            }
            by_service.entry(service).or_insert(id);
        }
        for (service, id) in &by_service {
            wait_healthy(docker, name, service, id, limit).await?;
        }
        for (service, how) in waits {
            let Some(id) = by_service.get(service) else {
                return Err(failed(
                    name,
                    format!("compose started no `{service}` container"),
                ));
            };
            let published = |p: u16| {
                ports.get(&(service.clone(), p)).copied().ok_or_else(|| {
                    failed(
                        name,
                        format!("`{service}` publishes no port {p} to wait on"),
                    )
                })
            };
            let not_ready = |reason: String| ProvisionError::NotReady {
                timeout: limit.timeout,
                reason: format!("compose service `{service}`: {reason}"),
            };
            match how {
                WaitStrategy::None => {}
                WaitStrategy::Healthcheck => wait_healthy(docker, name, service, id, limit).await?,
                WaitStrategy::Port { port } => {
                    let addr = format!("{host}:{}", published(*port)?);
                    wait::until_port(&addr, deadline).await.map_err(not_ready)?;
                }
                WaitStrategy::Http { port, path, status } => {
                    let addr = format!("{host}:{}", published(*port)?);
                    wait::until_http(&addr, path, *status, deadline)
                        .await
                        .map_err(not_ready)?;
                }
                WaitStrategy::Log { message } => {
                    until_logged(docker, id, message).await.map_err(not_ready)?
                }
            }
        }
        Ok(ports)
    }

    /// Takes a stack down with its volumes: `down -v` when this process started it, else by its
    /// labels (after an agent restart).
    pub async fn remove(&self, docker: &Docker, project: &str) {
        let live = self.live.lock().await.remove(project);
        take_down(docker, live.as_ref(), project).await;
    }
}

impl Live {
    fn command(&self, project: &str) -> tokio::process::Command {
        let mut c = self.tool.command();
        c.arg("--project-name")
            .arg(project)
            .arg("--project-directory")
            .arg(&self.project_dir)
            .arg("-f")
            .arg(&self.file);
        c
    }
}

async fn take_down(docker: &Docker, live: Option<&Live>, project: &str) {
    if let Some(live) = live {
        let mut down = live.command(project);
        down.args(["down", "-v", "--remove-orphans", "--timeout", "1"]);
        match tokio::time::timeout(DOWN_TIMEOUT, run(&mut down, project, "down")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(project, error = %e, "`down` failed; removing the stack by its labels")
            }
            Err(_) => tracing::warn!(
                project,
                "`down` did not end within {DOWN_TIMEOUT:?}; removing the stack by its labels"
            ),
        }
    }
    // Whatever `down` left (or all of it, when no tool holds the project any more).
    remove_project(docker, project).await;
}

/// Removes a project's containers, networks and volumes by compose's label.
async fn remove_project(docker: &Docker, project: &str) {
    let filter = HashMap::from([(
        "label".to_owned(),
        vec![format!("{PROJECT_LABEL}={project}")],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for id in containers.into_iter().filter_map(|c| c.id) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = docker.remove_container(&id, Some(opts)).await;
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter.clone()),
        }))
        .await
        .unwrap_or_default();
    for n in networks.into_iter().filter_map(|n| n.name) {
        let _ = docker.remove_network(&n).await;
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter),
        }))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default();
    for v in volumes {
        let _ = docker
            .remove_volume(
                &v.name,
                None::<testcontainers::bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }
}

/// Runs a compose command; its error output is the error.
async fn run(
    cmd: &mut tokio::process::Command,
    stack: &str,
    what: &str,
) -> Result<String, ProvisionError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(stack, format!("cannot run the compose tool: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = said.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(failed(
        stack,
        format!("`{what}` failed ({}): {}", out.status, tail.join("\n")),
    ))
}

/// `tf-<agent>-<scope>-<random>`, in the characters compose allows in project names.
fn project_name(req: &StartRequest<'_>) -> String {
    let label = |k: &str| req.labels.get(k).map(String::as_str).unwrap_or("");
    let raw = format!(
        "tf-{}-{}-{:06x}",
        label(LABEL_AGENT),
        label(LABEL_SCOPE),
        fastrand::u32(..0x100_0000)
    );
    raw.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Rewrites a rendered compose document for one agent (see the module's comment). Returns the
/// images of services compose will not build.
fn rewrite(
    doc: &mut Value,
    labels: &BTreeMap<String, String>,
    pinned: bool,
) -> Result<Vec<String>, String> {
    let label_map = || {
        let mut m = Mapping::new();
        for (k, v) in labels {
            m.insert(Value::from(k.as_str()), Value::from(v.as_str()));
        }
        m
    };
    let add_labels = |entry: &mut Value| {
        if let Some(obj) = entry.as_mapping_mut() {
            let existing = obj
                .entry(Value::from("labels"))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            // Rendered labels are a mapping; a list form (`- a=b`) becomes one first.
            if let Some(list) = existing.as_sequence() {
                let mut m = Mapping::new();
                for item in list.iter().filter_map(Value::as_str) {
                    let (k, v) = item.split_once('=').unwrap_or((item, ""));
                    m.insert(Value::from(k), Value::from(v));
                }
                *existing = Value::Mapping(m);
            }
            if let Some(m) = existing.as_mapping_mut() {
                m.extend(label_map());
            }
        }
    };
    let services = doc
        .get_mut("services")
        .and_then(Value::as_mapping_mut)
        .ok_or("the compose files define no services")?;
    let mut images = Vec::new();
    for (_, svc) in services.iter_mut() {
        let Some(obj) = svc.as_mapping_mut() else {
            continue;
        };
        if !pinned {
            obj.remove("container_name");
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_sequence_mut) {
                for p in ports.iter_mut() {
                    *p = unpinned(p)?;
                }
            }
        }
        if obj.get("build").is_none()
            && let Some(image) = obj.get("image").and_then(Value::as_str)
        {
            images.push(image.to_owned());
        }
        add_labels(svc);
    }
    // Networks and volumes the project makes (not external ones) carry the labels too; the
    // default network is declared so that it does.
    let root = doc
        .as_mapping_mut()
        .ok_or("the compose document is not a mapping")?;
    for key in ["networks", "volumes"] {
        let section = root
            .entry(Value::from(key))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if section.is_null() {
            *section = Value::Mapping(Mapping::new());
        }
        let Some(section) = section.as_mapping_mut() else {
            continue;
        };
        if key == "networks" && !section.contains_key("default") {
            section.insert(Value::from("default"), Value::Mapping(Mapping::new()));
        }
        for (_, entry) in section.iter_mut() {
            if entry.is_null() {
                *entry = Value::Mapping(Mapping::new());
            }
            let external = entry
                .get("external")
                .is_some_and(|e| e.as_bool() != Some(false));
            if !external {
                add_labels(entry);
            }
        }
    }
    Ok(images)
}

/// A `ports` entry with its host side taken off: the container port, published on a port the
/// engine picks.
fn unpinned(p: &Value) -> Result<Value, String> {
    let mut m = Mapping::new();
    match p {
        Value::Mapping(long) => {
            let target = long
                .get("target")
                .cloned()
                .ok_or("a port without `target`")?;
            m.insert(Value::from("target"), target);
            if let Some(proto) = long.get("protocol") {
                m.insert(Value::from("protocol"), proto.clone());
            }
        }
        // Short syntax (not what `config` renders, but allowed): `[IP:][HOST:]CONTAINER[/PROTO]`.
        other => {
            let text = match other {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(format!("a port entry compose would not accept: {other:?}")),
            };
            let (ports, proto) = text.split_once('/').unwrap_or((&text, "tcp"));
            let container = ports.rsplit(':').next().unwrap_or(ports);
            let target: u64 = container
                .parse()
                .map_err(|_| format!("port `{text}`: ranges are not supported"))?;
            m.insert(Value::from("target"), Value::from(target));
            m.insert(Value::from("protocol"), Value::from(proto));
        }
    }
    Ok(Value::Mapping(m))
}

/// Waits while a container with a healthcheck is starting; healthy or without one, it is ready.
async fn wait_healthy(
    docker: &Docker,
    stack: &str,
    service: &str,
    id: &str,
    limit: Limit,
) -> Result<(), ProvisionError> {
    loop {
        let c = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| failed(stack, e))?;
        let state = c.state.unwrap_or_default();
        let health = state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if state.running != Some(true)
            && state.status.map(|s| s.to_string()).as_deref() == Some("exited")
        {
            let logs = tail_logs(docker, id).await;
            return Err(failed(
                stack,
                format!("compose service `{service}` exited while starting:\n{logs}"),
            ));
        }
        match health.as_str() {
            "" | "none" | "healthy" => return Ok(()),
            "unhealthy" => {
                return Err(ProvisionError::NotReady {
                    timeout: limit.timeout,
                    reason: format!("compose service `{service}` reports unhealthy"),
                });
            }
            _ => {}
        }
        if Instant::now() >= limit.at {
            return Err(ProvisionError::NotReady {
                timeout: limit.timeout,
                reason: format!("compose service `{service}` was still `{health}`"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows a container's output until a line contains `message`.
async fn until_logged(docker: &Docker, id: &str, message: &str) -> Result<(), String> {
    let mut logs = docker.logs(
        id,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        }),
    );
    let mut pending = String::new();
    while let Some(chunk) = logs.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        if pending.contains(message) {
            return Ok(());
        }
        // Keep only what a message split across chunks could still need.
        if let Some(i) = pending.rfind('\n') {
            pending.drain(..=i);
        }
    }
    Err(format!("its output ended without `{message}`"))
}

async fn tail_logs(docker: &Docker, id: &str) -> String {
    let mut logs = docker.logs(
        id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".into(),
            ..Default::default()
        }),
    );
    let mut out = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_stack_is_relabelled_and_unpinned() {
        // What `docker-compose config` renders for a file that pins a name and a host port.
        let rendered = r#"
services:
  db:
    image: postgres:16
    labels: [tier=data]
    ports:
    - target: 5432
    volumes:
    - data:/var/lib/postgresql/data:rw
  front:
    build: {context: /ws/front}
    container_name: pinned-front
    image: team/front:dev
    ports:
    - published: 8080
      target: 80
      protocol: tcp
    - "127.0.0.1:9090:9000/udp"
networks:
  shared: {external: true}
volumes:
  data: {}
"#;
        let mut doc: Value = serde_yaml::from_str(rendered).unwrap();
        let labels = BTreeMap::from([("testfleet.agent".to_owned(), "a1".to_owned())]);
        let mut as_pinned = doc.clone();
        let images = rewrite(&mut doc, &labels, false).unwrap();
        assert_eq!(
            images,
            ["postgres:16"],
            "built services are compose's to build"
        );
        let front = &doc["services"]["front"];
        assert!(front.get("container_name").is_none());
        let ports: Vec<String> = front["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| serde_yaml::to_string(p).unwrap().replace('\n', " "))
            .collect();
        assert_eq!(
            ports,
            ["target: 80 protocol: tcp ", "target: 9000 protocol: udp "]
        );
        assert_eq!(doc["services"]["db"]["labels"]["tier"], "data");
        assert_eq!(doc["services"]["db"]["labels"]["testfleet.agent"], "a1");
        assert_eq!(doc["volumes"]["data"]["labels"]["testfleet.agent"], "a1");
        assert_eq!(
            doc["networks"]["default"]["labels"]["testfleet.agent"],
            "a1"
        );
        assert!(
            doc["networks"]["shared"].get("labels").is_none(),
            "an external network is not ours to label"
        );
        // `host_ports = "file"`: labelled, but ports and names as the file has them.
        rewrite(&mut as_pinned, &labels, true).unwrap();
        let front = &as_pinned["services"]["front"];
        assert_eq!(front["container_name"], "pinned-front");
        assert_eq!(front["ports"][0]["published"], 8080);
        assert_eq!(front["labels"]["testfleet.agent"], "a1");
    }
}
