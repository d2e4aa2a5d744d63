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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::{ImageRequest, ProvisionError, PullReport, StartRequest, Started};
    use std::sync::Mutex as StdMutex;
    use testfleet_model::{ImageSource, Template, WaitStrategy};

    /// Records what the pool asks for; `fail` makes starts of that service fail.
    #[derive(Default)]
    struct Fake {
        log: StdMutex<Vec<String>>,
        next: StdMutex<u32>,
        fail: Option<&'static str>,
        /// Every start waits here for the others: only starts under way together get through.
        together: Option<tokio::sync::Barrier>,
    }

    impl Fake {
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
        fn count(&self, prefix: &str) -> usize {
            self.log().iter().filter(|l| l.starts_with(prefix)).count()
        }
    }

    #[tonic::async_trait]
    impl Provisioner for Fake {
        async fn status(&self) -> Result<(), String> {
            Ok(())
        }
        async fn create_network(
            &self,
            name: &str,
            labels: &BTreeMap<String, String>,
        ) -> Result<(), ProvisionError> {
            assert_eq!(labels[LABEL_AGENT], "a1");
            self.log.lock().unwrap().push(format!("net+ {name}"));
            Ok(())
        }
        async fn remove_network(&self, name: &str) -> Result<(), ProvisionError> {
            self.log.lock().unwrap().push(format!("net- {name}"));
            Ok(())
        }
        async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProvisionError> {
            // A real start takes a while: let concurrent callers interleave here.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            if let Some(b) = &self.together {
                b.wait().await;
            }
            let spec = req.image.spec;
            if self.fail == Some(spec.name.as_str()) {
                return Err(ProvisionError::Engine("no such thing".into()));
            }
            assert_eq!(req.labels[LABEL_SERVICE], spec.name);
            assert!(req.network.is_some(), "every container joins a network");
            let id = {
                let mut n = self.next.lock().unwrap();
                *n += 1;
                format!("c{n}")
            };
            self.log.lock().unwrap().push(format!(
                "start {} {id} lease={}",
                spec.name, req.labels[LABEL_LEASE]
            ));
            Ok(Started {
                container_id: id,
                host: "127.0.0.1".into(),
                ports: spec.ports.iter().map(|p| (*p, 10_000 + *p)).collect(),
                stack_ports: BTreeMap::new(),
                duration: Duration::from_millis(5),
            })
        }
        async fn remove(&self, container_id: &str) -> Result<(), ProvisionError> {
            self.log.lock().unwrap().push(format!("rm {container_id}"));
            Ok(())
        }
        async fn image(&self, req: &ImageRequest<'_>) -> Result<(), ProvisionError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("image {} run={}", req.spec.source, req.run_id));
            (req.on_pull)(PullReport {
                image: req.spec.source.to_string(),
                registry: "docker.io".into(),
                duration: Duration::from_millis(3),
                error: None,
            });
            Ok(())
        }
        async fn sweep(&self, _agent: &AgentId) -> Result<SweepReport, ProvisionError> {
            self.log.lock().unwrap().push("sweep".into());
            Ok(SweepReport::default())
        }
    }

    fn svc(name: &str, scope: Scope) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            source: ImageSource::parse_image("img:1").unwrap(),
            env: BTreeMap::new(),
            cmd: vec![],
            ports: vec![80],
            wait: WaitStrategy::None,
            startup_timeout: Duration::from_secs(5),
            scope,
            exports: BTreeMap::from([(
                format!("{}_ADDR", name.to_uppercase()),
                Template::parse("{host}:{port:80}").unwrap(),
            )]),
            pull: None,
            pull_timeout: None,
        }
    }

    fn ctx(lease: &str) -> LeaseCtx {
        LeaseCtx {
            run_id: "1".into(),
            lease_id: lease.into(),
            workspace: None,
        }
    }

    fn pool(fake: &Arc<Fake>) -> ServicePool {
        ServicePool::new(fake.clone(), "a1".parse().unwrap())
    }

    #[tokio::test]
    async fn prefetching_asks_for_the_registry_images_and_reports_their_pulls_for_the_lease() {
        let fake = Arc::new(Fake::default());
        let pool = Arc::new(pool(&fake));
        let mut pulls = pool.take_pulls().unwrap();
        assert!(pool.take_pulls().is_none(), "one reader");
        let mut built = svc("built", Scope::Agent);
        built.source = ImageSource::Build {
            context: "docker".into(),
            dockerfile: "Dockerfile".into(),
        };
        pool.prefetch(&ctx("7"), &[svc("db", Scope::Lease), built]);
        let p = tokio::time::timeout(Duration::from_secs(60), pulls.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((p.run_id.as_str(), p.lease_id.as_str()), ("1", "7"));
        assert_eq!(p.report.image, "img:1");
        // Builds are not prefetched: only what a registry serves.
        assert_eq!(fake.log(), ["image img:1 run=1"]);
    }

    #[tokio::test]
    async fn scopes_decide_how_often_a_container_starts_and_when_it_goes() {
        let fake = Arc::new(Fake::default());
        let pool = pool(&fake);
        let all = [
            svc("ag", Scope::Agent),
            svc("le", Scope::Lease),
            svc("te", Scope::Test),
        ];
        let mut prepared = vec![];
        for lease in ["1", "1", "2"] {
            let p = pool.prepare(&ctx(lease), &all).await.unwrap();
            assert_eq!(p.env["TE_ADDR"], "127.0.0.1:10080", "exports are rendered");
            prepared.push(p);
        }
        assert_eq!(fake.count("start ag"), 1, "agent scope: once for the agent");
        assert_eq!(fake.count("start le"), 2, "lease scope: once per lease");
        assert_eq!(fake.count("start te"), 3, "test scope: once per test");
        // Fresh starts are reported once; reuses are not.
        let reported: usize = prepared.iter().map(|p| p.starts.len()).sum();
        assert_eq!(reported, 6);

        for p in prepared {
            pool.finish_test(p).await;
        }
        assert_eq!(
            fake.count("rm"),
            3,
            "each test's own container goes after the test"
        );
        pool.release_lease("1").await;
        assert_eq!(
            fake.count("rm"),
            4,
            "the lease's container goes with the lease"
        );
        assert_eq!(fake.count("net-"), 1, "and its network");
        pool.release_lease("1").await;
        assert_eq!(fake.count("rm"), 4, "releasing twice is harmless");

        pool.shutdown().await;
        assert_eq!(
            fake.count("rm"),
            6,
            "shutdown removes lease 2's and the agent's containers"
        );
        assert_eq!(
            fake.count("net+"),
            fake.count("net-"),
            "every network is removed: {:?}",
            fake.log()
        );
        assert_eq!(fake.log().last().map(String::as_str), Some("sweep"));
    }

    #[tokio::test]
    async fn concurrent_tests_of_a_lease_wait_for_one_start() {
        let fake = Arc::new(Fake::default());
        let pool = pool(&fake);
        let lease = [svc("le", Scope::Lease)];
        let c = ctx("7");
        let (a, b) = tokio::join!(pool.prepare(&c, &lease), pool.prepare(&c, &lease));
        assert_eq!(a.unwrap().env, b.unwrap().env);
        assert_eq!(fake.count("start le"), 1);
    }

    #[tokio::test]
    async fn a_test_s_services_start_at_once() {
        // Started one after another, the first start would wait for the second forever.
        let fake = Arc::new(Fake {
            together: Some(tokio::sync::Barrier::new(3)),
            ..Default::default()
        });
        let pool = pool(&fake);
        let all = [
            svc("ag", Scope::Agent),
            svc("le", Scope::Lease),
            svc("te", Scope::Test),
        ];
        let prepared = tokio::time::timeout(Duration::from_secs(60), pool.prepare(&ctx("1"), &all))
            .await
            .expect("the three starts were under way together")
            .unwrap();
        assert_eq!(prepared.env.len(), 3, "{:?}", prepared.env);
        assert_eq!(prepared.starts.len(), 3);
    }

    #[tokio::test]
    async fn a_lease_released_while_its_services_start_leaves_nothing_behind() {
        let fake = Arc::new(Fake::default());
        let pool = Arc::new(pool(&fake));
        let c = ctx("9");
        let lease = [svc("le", Scope::Lease), svc("le2", Scope::Lease)];
        // The release lands while the start is yielding inside the provisioner.
        let p = pool.clone();
        let (prepared, ()) = tokio::join!(pool.prepare(&c, &lease), async move {
            tokio::task::yield_now().await;
            p.release_lease("9").await;
        });
        let err = prepared.unwrap_err();
        assert!(err.contains("was released"), "{err}");
        assert_eq!(
            fake.count("start le"),
            fake.count("rm"),
            "every start was removed: {:?}",
            fake.log()
        );
        assert_eq!(fake.count("net+"), fake.count("net-"), "{:?}", fake.log());
        // And a test of that lease arriving afterwards starts nothing.
        let started = fake.count("start le");
        assert!(pool.prepare(&c, &lease).await.is_err());
        assert_eq!(fake.count("start le"), started);
    }

    #[tokio::test]
    async fn a_failed_start_removes_what_the_test_had_started_and_names_the_service() {
        let fake = Arc::new(Fake {
            fail: Some("broken"),
            ..Default::default()
        });
        let pool = pool(&fake);
        let err = pool
            .prepare(
                &ctx("1"),
                &[svc("te", Scope::Test), svc("broken", Scope::Lease)],
            )
            .await
            .unwrap_err();
        assert!(
            err.contains("service `broken` (img:1): no such thing"),
            "{err}"
        );
        assert_eq!(fake.count("start te"), 1);
        assert_eq!(fake.count("rm"), 1, "the test's container did not leak");
    }
}
