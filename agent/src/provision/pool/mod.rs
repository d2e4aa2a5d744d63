//! The service pool applies scopes: `agent` services are started once and shared by every lease
//! that needs the same spec, `lease` services once per lease, `test` services once per test. It
//! remembers everything it started so that a finished, cancelled or lost lease — and the agent's
//! own shutdown — removes exactly what it should.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use testfleet_model::{AgentId, Scope, ServiceSpec};
use tokio::sync::{Mutex, OnceCell, mpsc};

use super::{
    ImageRequest, LABEL_AGENT, LABEL_LEASE, LABEL_RUN, LABEL_SCOPE, LABEL_SERVICE, Provisioner,
    PullReport, StartRequest, Started, SweepReport,
};

/// The lease a test belongs to, as the pool needs it.
#[derive(Clone, Debug)]
pub struct LeaseCtx {
    pub run_id: String,
    pub lease_id: String,
    /// Where build contexts are resolved.
    pub workspace: Option<PathBuf>,
}

/// A pull made for a lease, for the coordinator's timings.
#[derive(Clone, Debug)]
pub struct PulledFor {
    pub run_id: String,
    pub lease_id: String,
    pub report: PullReport,
}

/// A container started for a test (not a reuse), for the coordinator's timings.
#[derive(Clone, Debug)]
pub struct StartReport {
    pub service: String,
    pub scope: Scope,
    pub duration: Duration,
    pub container_id: String,
    pub fingerprint: String,
}

/// What a test gets from its services.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The services' exports, rendered.
    pub env: BTreeMap<String, String>,
    pub starts: Vec<StartReport>,
    /// Test-scope containers, removed by [`ServicePool::finish_test`].
    test_containers: Vec<String>,
    /// Every service the test got and its container, checked when the test fails.
    used: Vec<(String, String)>,
}

/// One service ready for a test: its container, and whether this call started it.
struct Ready {
    started: Started,
    fresh: bool,
}

type Cell<T> = Arc<OnceCell<T>>;

#[derive(Default)]
struct LeaseServices {
    network: Cell<String>,
    services: HashMap<String, Cell<Started>>,
}

#[derive(Default)]
struct State {
    agent_network: Cell<String>,
    agent_services: HashMap<String, Cell<Started>>,
    leases: HashMap<String, LeaseServices>,
    /// Leases already released (newest last, bounded): a test of one that is still starting its
    /// services must not leave what it starts behind.
    released: std::collections::VecDeque<String>,
}

/// Released lease ids remembered; far more than can be in flight at once.
const RELEASED_KEEP: usize = 4096;

pub struct ServicePool {
    prov: Arc<dyn Provisioner>,
    agent: AgentId,
    state: Mutex<State>,
    /// Pulls as they end, for whoever reports them (`take_pulls`).
    pulled_tx: mpsc::UnboundedSender<PulledFor>,
    pulled_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<PulledFor>>>,
    /// The engine as the last probe saw it ([`engine`]).
    engine: tokio::sync::watch::Sender<Engine>,
}

fn suffix() -> String {
    format!("{:06x}", fastrand::u32(..0x100_0000))
}

impl ServicePool {
    pub fn new(prov: Arc<dyn Provisioner>, agent: AgentId) -> Self {
        let (pulled_tx, pulled_rx) = mpsc::unbounded_channel();
        ServicePool {
            prov,
            agent,
            state: Mutex::default(),
            pulled_tx,
            pulled_rx: std::sync::Mutex::new(Some(pulled_rx)),
            engine: tokio::sync::watch::Sender::new(Engine::Up),
        }
    }

    /// The pulls made for leases, as they end; the first caller gets them, later ones `None`.
    pub fn take_pulls(&self) -> Option<mpsc::UnboundedReceiver<PulledFor>> {
        self.pulled_rx.lock().ok()?.take()
    }

    /// Reports a lease's pulls through `pulled_tx`.
    fn pull_notes(&self, ctx: &LeaseCtx) -> impl Fn(PullReport) + Send + Sync + use<> {
        let (tx, run_id, lease_id) = (
            self.pulled_tx.clone(),
            ctx.run_id.clone(),
            ctx.lease_id.clone(),
        );
        move |report| {
            let _ = tx.send(PulledFor {
                run_id: run_id.clone(),
                lease_id: lease_id.clone(),
                report,
            });
        }
    }

    /// Starts making the run's registry images present, in the background, when the agent takes
    /// the run's first lease: its tests then find them pulled, or join the pull under way, instead
    /// of each starting one when it needs it. Failures are reported, and met again by the tests.
    pub fn prefetch(self: &Arc<Self>, ctx: &LeaseCtx, services: &[ServiceSpec]) {
        for spec in services {
            if !matches!(spec.source, testfleet_model::ImageSource::Image { .. }) {
                continue;
            }
            let (pool, ctx, spec) = (self.clone(), ctx.clone(), spec.clone());
            tokio::spawn(async move {
                let on_pull = pool.pull_notes(&ctx);
                let req = ImageRequest {
                    spec: &spec,
                    workspace: ctx.workspace.clone(),
                    run_id: ctx.run_id.clone(),
                    on_pull: &on_pull,
                };
                if let Err(e) = pool.prov.image(&req).await {
                    tracing::debug!(service = %spec.name, error = %e, "prefetching an image failed");
                }
            });
        }
    }

    pub fn provisioner(&self) -> &Arc<dyn Provisioner> {
        &self.prov
    }

    fn labels(
        &self,
        ctx: &LeaseCtx,
        scope: Option<Scope>,
        service: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (LABEL_AGENT.to_owned(), self.agent.to_string()),
            (LABEL_RUN.to_owned(), ctx.run_id.clone()),
            (LABEL_LEASE.to_owned(), ctx.lease_id.clone()),
        ]);
        if let Some(s) = scope {
            l.insert(LABEL_SCOPE.to_owned(), s.as_str().to_owned());
        }
        if let Some(s) = service {
            l.insert(LABEL_SERVICE.to_owned(), s.to_owned());
        }
        l
    }

    async fn network(
        &self,
        cell: Cell<String>,
        name: String,
        ctx: &LeaseCtx,
    ) -> Result<String, String> {
        let labels = self.labels(ctx, None, None);
        cell.get_or_try_init(|| async {
            self.prov
                .create_network(&name, &labels)
                .await
                .map(|()| name.clone())
                .map_err(|e| format!("cannot create network `{name}`: {e}"))
        })
        .await
        .cloned()
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &LeaseCtx,
        network: Option<String>,
    ) -> Result<Started, String> {
        let on_pull = self.pull_notes(ctx);
        self.prov
            .start(StartRequest {
                image: ImageRequest {
                    spec,
                    workspace: ctx.workspace.clone(),
                    run_id: ctx.run_id.clone(),
                    on_pull: &on_pull,
                },
                labels: self.labels(ctx, Some(spec.scope), Some(&spec.name)),
                network,
            })
            .await
            .map_err(|e| format!("service `{}` ({}): {e}", spec.name, spec.source))
    }

    /// Starts (or reuses) what a test needs and renders the exports. On error, whatever this call
    /// started for the test alone is removed again.
    pub async fn prepare(
        &self,
        ctx: &LeaseCtx,
        services: &[ServiceSpec],
    ) -> Result<Prepared, String> {
        self.engine_ready().await?;
        let mut prepared = Prepared::default();
        match self.prepare_into(ctx, services, &mut prepared).await {
            Ok(()) => Ok(prepared),
            Err(e) => {
                self.finish_test(prepared).await;
                Err(e)
            }
        }
    }

    /// Starts the services at once, not one after another: a test waits for the slowest, not for
    /// the sum. Whatever was started for the test alone is recorded even when another one failed,
    /// so that `prepare` removes it again.
    async fn prepare_into(
        &self,
        ctx: &LeaseCtx,
        services: &[ServiceSpec],
        out: &mut Prepared,
    ) -> Result<(), String> {
        let ready = join_all(services.iter().map(|spec| self.prepare_one(ctx, spec))).await;
        let mut first_error = None;
        for (spec, one) in services.iter().zip(ready) {
            let one = match one {
                Ok(one) => one,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if spec.scope == Scope::Test {
                out.test_containers.push(one.started.container_id.clone());
            }
            out.used
                .push((spec.name.clone(), one.started.container_id.clone()));
            if one.fresh {
                out.starts.push(StartReport {
                    service: spec.name.clone(),
                    scope: spec.scope,
                    duration: one.started.duration,
                    container_id: one.started.container_id.clone(),
                    fingerprint: spec.fingerprint(),
                });
            }
            for (key, template) in &spec.exports {
                let value = template
                    .render(&one.started.host, &|svc, p| match svc {
                        None => one.started.ports.get(&p).copied(),
                        Some(s) => one.started.stack_ports.get(&(s.to_owned(), p)).copied(),
                    })
                    .map_err(|e| format!("service `{}`: export `{key}`: {e}", spec.name));
                match value {
                    Ok(value) => {
                        out.env.insert(key.clone(), value);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if first_error.is_some()
            && services.iter().any(|s| s.scope == Scope::Lease)
            && self.is_released(&ctx.lease_id).await
        {
            self.drop_lease_remnants(&ctx.lease_id).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts (or finds) one service for a test of the lease in `ctx`.
    async fn prepare_one(&self, ctx: &LeaseCtx, spec: &ServiceSpec) -> Result<Ready, String> {
        if self.is_released(&ctx.lease_id).await {
            return Err(format!(
                "lease {} was released (cancelled or lost)",
                ctx.lease_id
            ));
        }
        let fresh = AtomicBool::new(false);
        // A compose stack brings its own networks; a network of the pool's would go unused.
        let stack = matches!(spec.source, testfleet_model::ImageSource::Compose { .. });
        let started = match spec.scope {
            Scope::Test => {
                let net = if stack {
                    None
                } else {
                    let (cell, name) = self.lease_network_cell(ctx).await;
                    Some(self.network(cell, name, ctx).await?)
                };
                fresh.store(true, Ordering::Relaxed);
                self.start(spec, ctx, net).await?
            }
            Scope::Lease | Scope::Agent => {
                let (cell, net_cell, net_name) = {
                    let mut st = self.state.lock().await;
                    let fingerprint = spec.fingerprint();
                    if spec.scope == Scope::Agent {
                        let cell = st.agent_services.entry(fingerprint).or_default().clone();
                        (
                            cell,
                            st.agent_network.clone(),
                            format!("tf-{}-agent-{}", self.agent, suffix()),
                        )
                    } else {
                        let lease = st.leases.entry(ctx.lease_id.clone()).or_default();
                        let cell = lease.services.entry(fingerprint).or_default().clone();
                        let name = format!("tf-{}-lease-{}-{}", self.agent, ctx.lease_id, suffix());
                        (cell, lease.network.clone(), name)
                    }
                };
                cell.get_or_try_init(|| async {
                    let net = if stack {
                        None
                    } else {
                        Some(self.network(net_cell, net_name, ctx).await?)
                    };
                    let s = self.start(spec, ctx, net).await?;
                    fresh.store(true, Ordering::Relaxed);
                    Ok::<_, String>(s)
                })
                .await?
                .clone()
            }
        };
        // Released while this start was under way: the container goes again now, the lease's
        // network once every start has ended (`prepare_into`); test scope goes with the test,
        // through `finish_test`.
        if spec.scope == Scope::Lease && self.is_released(&ctx.lease_id).await {
            let _ = self.prov.remove(&started.container_id).await;
            return Err(format!(
                "lease {} was released (cancelled or lost)",
                ctx.lease_id
            ));
        }
        Ok(Ready {
            started,
            fresh: fresh.into_inner(),
        })
    }

    async fn lease_network_cell(&self, ctx: &LeaseCtx) -> (Cell<String>, String) {
        let mut st = self.state.lock().await;
        let lease = st.leases.entry(ctx.lease_id.clone()).or_default();
        let name = format!("tf-{}-lease-{}-{}", self.agent, ctx.lease_id, suffix());
        (lease.network.clone(), name)
    }

    /// Forgets a container the engine no longer runs: the next test that needs its service starts
    /// a new one (the old one is removed by a sweep).
    async fn forget(&self, container_id: &str) {
        let is_it =
            |cell: &Cell<Started>| cell.get().is_some_and(|s| s.container_id == container_id);
        let mut st = self.state.lock().await;
        st.agent_services.retain(|_, cell| !is_it(cell));
        for lease in st.leases.values_mut() {
            lease.services.retain(|_, cell| !is_it(cell));
        }
    }

    /// Forgets every container and network: the engine went away, and one that restarts has
    /// killed them.
    async fn forget_all(&self) {
        let mut st = self.state.lock().await;
        st.agent_services.clear();
        st.agent_network = Cell::default();
        for lease in st.leases.values_mut() {
            *lease = LeaseServices::default();
        }
    }

    /// Removes the test-scope containers of a finished test.
    pub async fn finish_test(&self, prepared: Prepared) {
        for id in prepared.test_containers {
            if let Err(e) = self.prov.remove(&id).await {
                tracing::warn!(container = %id, error = %e, "failed to remove a test's container");
            }
        }
    }

    /// Removes a lease's containers and network: it finished, was cancelled, or was lost.
    pub async fn release_lease(&self, lease_id: &str) {
        let lease = {
            let mut st = self.state.lock().await;
            if !st.released.iter().any(|l| l == lease_id) {
                st.released.push_back(lease_id.to_owned());
                if st.released.len() > RELEASED_KEEP {
                    st.released.pop_front();
                }
            }
            st.leases.remove(lease_id)
        };
        let Some(lease) = lease else {
            return;
        };
        for cell in lease.services.values() {
            if let Some(s) = cell.get()
                && let Err(e) = self.prov.remove(&s.container_id).await
            {
                tracing::warn!(container = %s.container_id, error = %e, "failed to remove a lease's container");
            }
        }
        if let Some(net) = lease.network.get()
            && let Err(e) = self.prov.remove_network(net).await
        {
            tracing::warn!(network = %net, error = %e, "failed to remove a lease's network");
        }
    }

    async fn is_released(&self, lease_id: &str) -> bool {
        self.state
            .lock()
            .await
            .released
            .iter()
            .any(|l| l == lease_id)
    }

    /// A test that started after its lease was released may have made a new network for it.
    async fn drop_lease_remnants(&self, lease_id: &str) {
        let remnants = self.state.lock().await.leases.remove(lease_id);
        if let Some(net) = remnants.as_ref().and_then(|l| l.network.get()) {
            let _ = self.prov.remove_network(net).await;
        }
    }

    /// Removes everything this agent started, then sweeps by label for anything missed.
    pub async fn shutdown(&self) -> Option<SweepReport> {
        let leases: Vec<String> = self.state.lock().await.leases.keys().cloned().collect();
        for l in leases {
            self.release_lease(&l).await;
        }
        let (services, network) = {
            let mut st = self.state.lock().await;
            (
                std::mem::take(&mut st.agent_services),
                std::mem::take(&mut st.agent_network),
            )
        };
        for cell in services.values() {
            if let Some(s) = cell.get() {
                let _ = self.prov.remove(&s.container_id).await;
            }
        }
        if let Some(net) = network.get() {
            let _ = self.prov.remove_network(net).await;
        }
        self.sweep().await
    }

    /// Removes everything labelled as this agent's; at start-up that is what a killed run left.
    pub async fn sweep(&self) -> Option<SweepReport> {
        match self.prov.sweep(&self.agent).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "failed to sweep this agent's containers");
                None
            }
        }
    }
}

mod engine;
#[cfg(test)]
mod tests;

pub use engine::Engine;
