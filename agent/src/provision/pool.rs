//! The service pool applies scopes: `agent` services are started once and shared by every lease
//! that needs the same spec, `lease` services once per lease, `test` services once per test. It
//! remembers everything it started so that a finished, cancelled or lost lease — and the agent's
//! own shutdown — removes exactly what it should.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testfleet_model::{AgentId, Scope, ServiceSpec};
use tokio::sync::{Mutex, OnceCell};

use super::{
    LABEL_AGENT, LABEL_LEASE, LABEL_RUN, LABEL_SCOPE, LABEL_SERVICE, Provisioner, StartRequest,
    Started, SweepReport,
};

/// The lease a test belongs to, as the pool needs it.
#[derive(Clone, Debug)]
pub struct LeaseCtx {
    pub run_id: String,
    pub lease_id: String,
    /// Where build contexts are resolved.
    pub workspace: Option<PathBuf>,
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
}

pub struct ServicePool {
    prov: Arc<dyn Provisioner>,
    agent: AgentId,
    state: Mutex<State>,
}

fn suffix() -> String {
    format!("{:06x}", fastrand::u32(..0x100_0000))
}

impl ServicePool {
    pub fn new(prov: Arc<dyn Provisioner>, agent: AgentId) -> Self {
        ServicePool {
            prov,
            agent,
            state: Mutex::default(),
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
        network: String,
    ) -> Result<Started, String> {
        self.prov
            .start(StartRequest {
                spec,
                workspace: ctx.workspace.clone(),
                labels: self.labels(ctx, Some(spec.scope), Some(&spec.name)),
                network: Some(network),
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
        let mut prepared = Prepared::default();
        match self.prepare_into(ctx, services, &mut prepared).await {
            Ok(()) => Ok(prepared),
            Err(e) => {
                self.finish_test(prepared).await;
                Err(e)
            }
        }
    }

    async fn prepare_into(
        &self,
        ctx: &LeaseCtx,
        services: &[ServiceSpec],
        out: &mut Prepared,
    ) -> Result<(), String> {
        for spec in services {
            let fingerprint = spec.fingerprint();
            let fresh = AtomicBool::new(false);
            let started = match spec.scope {
                Scope::Test => {
                    let (cell, name) = self.lease_network_cell(ctx).await;
                    let net = self.network(cell, name, ctx).await?;
                    let s = self.start(spec, ctx, net).await?;
                    out.test_containers.push(s.container_id.clone());
                    fresh.store(true, Ordering::Relaxed);
                    s
                }
                Scope::Lease | Scope::Agent => {
                    let (cell, net_cell, net_name) = {
                        let mut st = self.state.lock().await;
                        if spec.scope == Scope::Agent {
                            let cell = st
                                .agent_services
                                .entry(fingerprint.clone())
                                .or_default()
                                .clone();
                            (
                                cell,
                                st.agent_network.clone(),
                                format!("tf-{}-agent-{}", self.agent, suffix()),
                            )
                        } else {
                            let lease = st.leases.entry(ctx.lease_id.clone()).or_default();
                            let cell = lease
                                .services
                                .entry(fingerprint.clone())
                                .or_default()
                                .clone();
                            let name =
                                format!("tf-{}-lease-{}-{}", self.agent, ctx.lease_id, suffix());
                            (cell, lease.network.clone(), name)
                        }
                    };
                    cell.get_or_try_init(|| async {
                        let net = self.network(net_cell, net_name, ctx).await?;
                        let s = self.start(spec, ctx, net).await?;
                        fresh.store(true, Ordering::Relaxed);
                        Ok::<_, String>(s)
                    })
                    .await?
                    .clone()
                }
            };
            if fresh.load(Ordering::Relaxed) {
                out.starts.push(StartReport {
                    service: spec.name.clone(),
                    scope: spec.scope,
                    duration: started.duration,
                    container_id: started.container_id.clone(),
                    fingerprint: fingerprint.clone(),
                });
            }
            for (key, template) in &spec.exports {
                let value = template
                    .render(&started.host, &|p| started.ports.get(&p).copied())
                    .map_err(|e| format!("service `{}`: export `{key}`: {e}", spec.name))?;
                out.env.insert(key.clone(), value);
            }
        }
        Ok(())
    }

    async fn lease_network_cell(&self, ctx: &LeaseCtx) -> (Cell<String>, String) {
        let mut st = self.state.lock().await;
        let lease = st.leases.entry(ctx.lease_id.clone()).or_default();
        let name = format!("tf-{}-lease-{}-{}", self.agent, ctx.lease_id, suffix());
        (lease.network.clone(), name)
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
        let Some(lease) = self.state.lock().await.leases.remove(lease_id) else {
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
