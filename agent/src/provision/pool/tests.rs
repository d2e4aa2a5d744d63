//! The pool against a fake engine: what it starts, reuses and removes, and when.

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
    /// Set: the engine does not answer, for this reason.
    down: StdMutex<Option<String>>,
    /// Containers the engine no longer runs.
    dead: StdMutex<Vec<String>>,
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
        self.down.lock().unwrap().clone().map_or(Ok(()), Err)
    }
    async fn running(&self, container_id: &str) -> Result<bool, ProvisionError> {
        Ok(!self.dead.lock().unwrap().iter().any(|d| d == container_id))
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

#[tokio::test]
async fn an_engine_that_went_away_is_waited_for_and_swept_before_services_start_again() {
    let fake = Arc::new(Fake::default());
    let pool = Arc::new(pool(&fake));
    let all = [svc("ag", Scope::Agent)];
    let first = pool.prepare(&ctx("1"), &all).await.unwrap();
    assert_eq!(first.used, [("ag".to_owned(), "c1".to_owned())]);
    *fake.down.lock().unwrap() = Some("connection refused".into());
    pool.probe().await;
    assert_eq!(
        *pool.engine.borrow(),
        Engine::Down("connection refused".into())
    );
    // A test that needs the service waits for the engine instead of failing at once.
    let waiting = tokio::spawn({
        let pool = pool.clone();
        let all = all.clone();
        async move { pool.prepare(&ctx("2"), &all).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());
    *fake.down.lock().unwrap() = None;
    pool.probe().await;
    let second = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The agent-scope container the old engine ran is not reused: a new one starts, after what
    // the old engine left was swept.
    assert_eq!(second.used, [("ag".to_owned(), "c2".to_owned())]);
    let log = fake.log();
    let swept = log.iter().position(|l| l == "sweep").unwrap();
    let started = log
        .iter()
        .position(|l| l.starts_with("start ag c2"))
        .unwrap();
    assert!(swept < started, "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn an_engine_away_for_too_long_fails_the_test_s_services_saying_why() {
    let fake = Arc::new(Fake::default());
    let pool = pool(&fake);
    *fake.down.lock().unwrap() = Some("connection refused".into());
    pool.probe().await;
    let err = pool
        .prepare(&ctx("1"), &[svc("ag", Scope::Agent)])
        .await
        .unwrap_err();
    assert!(
        err.contains("has not answered for 60 s") && err.contains("connection refused"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_test_whose_container_died_is_told_so_and_the_next_test_gets_a_new_one() {
    let fake = Arc::new(Fake::default());
    let pool = pool(&fake);
    let all = [svc("ag", Scope::Agent)];
    let p = pool.prepare(&ctx("1"), &all).await.unwrap();
    assert_eq!(
        pool.lost_service(&p).await,
        None,
        "its container still runs"
    );
    fake.dead.lock().unwrap().push("c1".into());
    let why = pool.lost_service(&p).await.unwrap();
    assert!(
        why.contains("`ag`") && why.contains("no longer running"),
        "{why}"
    );
    let next = pool.prepare(&ctx("2"), &all).await.unwrap();
    assert_eq!(next.used, [("ag".to_owned(), "c2".to_owned())]);
}
