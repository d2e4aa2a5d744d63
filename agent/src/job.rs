//! One leased test, from lease to result: resolving its command (paths inside the bundle, its
//! environment), starting its services, running it, and removing its test-scope containers.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::session::{AgentMessage, Lease, LeasedTest, ServiceStarted};
use testfleet_model::{
    AttemptKey, AttemptResult, AttemptStatus, IdStyle, LeaseId, OriginTree, Runner, Scope,
    ServiceSpec, TestSettings,
};
use tokio::sync::{mpsc, watch};

use crate::AgentConfig;
use crate::executor::{self, TestCommand};
use crate::provision::{LeaseCtx, ServicePool};
use crate::runners::pytest_worker::Workers;
use crate::runners::{junit, libtest, libtest_batch};
use crate::sandbox::Sandbox;
use crate::trace::LeaseTrace;

/// One test of a job: its attempt, name and binary.
#[derive(Clone, Debug)]
pub(crate) struct JobTest {
    pub key: AttemptKey,
    pub name: String,
    pub binary_id: String,
}

/// A test ready to start, or (in batch mode) several tests for one process: of one binary, or for
/// a tool that writes JUnit, of any of its binaries (pytest takes the node ids of many files).
pub(crate) struct Job {
    /// Its tests, in the order they run.
    pub tests: Vec<JobTest>,
    /// The command of the first test (one process per test), or of the binary (a batch).
    pub cmd: TestCommand,
    pub runner: Runner,
    pub cancel: watch::Receiver<bool>,
    pub services: Vec<ServiceSpec>,
    pub ctx: LeaseCtx,
    /// The lease's trace, for the attempts' spans.
    pub trace: Arc<LeaseTrace>,
    /// The group all its tests belong to, if any.
    pub group: Option<String>,
    /// Its tests may run in a process that outlives the job (a pytest worker): the lease runs
    /// in batches, and its tests start no service of their own.
    pub reuse: bool,
    /// Slots it takes while it runs (a test's `threads-required`).
    pub slots: usize,
    /// The settings of its first test: a test with limits of its own
    /// ([`TestSettings::runs_alone`]) is the only one in its job.
    pub settings: TestSettings,
}

impl Job {
    pub fn lease_id(&self) -> LeaseId {
        self.tests[0].key.lease_id
    }

    fn names(&self) -> Vec<String> {
        self.tests.iter().map(|t| t.name.clone()).collect()
    }
}

/// A leased test whose command and services are resolved.
pub(crate) struct Ready {
    pub key: AttemptKey,
    pub name: String,
    pub binary_id: String,
    /// Tests of one group run in one job, whatever the batch size.
    pub group: Option<String>,
    pub cmd: TestCommand,
    pub runner: Runner,
    pub services: Vec<ServiceSpec>,
    /// Its settings: a test with limits of its own runs alone, and may take several slots.
    pub settings: TestSettings,
}

/// Turns a lease's resolved tests into jobs. With `per_process` above 1, consecutive tests share
/// a process, at most `per_process` of them, and a lease's tests are spread so every slot gets
/// some; the lease's tests are grouped by binary first. A libtest batch holds tests of one binary;
/// a tool that writes JUnit is given the ids of any of its binaries with the same command, so a
/// pytest process runs tests of many files and its start-up (the interpreter, the suite's
/// conftest imports) is paid once for them all. A group's tests (pytest's `xdist_group`, or the
/// suite's `dist` mode) all go in one job, so one worker runs them one after another. Tests whose
/// services are started per test always run alone.
pub(crate) fn jobs(
    mut ready: Vec<Ready>,
    per_process: usize,
    slots: usize,
    cancel: &watch::Receiver<bool>,
    ctx: &LeaseCtx,
    trace: &Arc<LeaseTrace>,
) -> Vec<Job> {
    let chunk = per_process.min(ready.len().div_ceil(slots.max(1))).max(1);
    if chunk > 1 || ready.iter().any(|r| r.group.is_some()) {
        // Stable: within a group and a binary, the scheduler's order (longest first) stays.
        ready.sort_by(|a, b| (&a.group, &a.binary_id).cmp(&(&b.group, &b.binary_id)));
    }
    let mut jobs: Vec<Job> = vec![];
    for r in ready {
        let own_services = r.services.iter().any(|s| s.scope == Scope::Test);
        let alone = r.settings.runs_alone();
        let batchable = chunk > 1 && !own_services && !alone;
        if let Some(last) = jobs.last_mut()
            && !alone
            && !last.settings.runs_alone()
            && ((batchable && last.tests.len() < chunk && last.group.is_none() && r.group.is_none())
                || (r.group.is_some() && last.group == r.group))
            && last.cmd.program == r.cmd.program
            && last.services == r.services
            // The process's environment names one attempt (`TESTFLEET_ATTEMPT`): retries
            // share a process only with retries.
            && last.tests[0].key.attempt == r.key.attempt
            && match r.runner {
                Runner::Libtest => last.tests[0].binary_id == r.binary_id,
                Runner::Junit { .. } => {
                    last.runner == r.runner && last.cmd.cwd == r.cmd.cwd && last.cmd.env == r.cmd.env
                }
            }
        {
            last.tests.push(JobTest {
                key: r.key,
                name: r.name,
                binary_id: r.binary_id,
            });
            continue;
        }
        jobs.push(Job {
            group: r.group,
            tests: vec![JobTest {
                key: r.key,
                name: r.name,
                binary_id: r.binary_id,
            }],
            cmd: r.cmd,
            runner: r.runner,
            cancel: cancel.clone(),
            services: r.services,
            ctx: ctx.clone(),
            trace: trace.clone(),
            // A lease of one test in batch mode (the tail of a run) still goes to a worker.
            reuse: per_process > 1 && !own_services && !alone,
            slots: if alone {
                r.settings.slots_on(slots as u32) as usize
            } else {
                1
            },
            settings: r.settings,
        });
    }
    jobs
}

/// Runs a job and records its attempts' spans.
pub(crate) async fn run_job(
    job: Job,
    pool: Option<Arc<ServicePool>>,
    no_docker: String,
    notes: mpsc::UnboundedSender<AgentMessage>,
    workers: Arc<Workers>,
) -> Vec<(AttemptKey, AttemptResult)> {
    let (trace, tests) = (job.trace.clone(), job.tests.clone());
    let results = run_tests(job, pool, no_docker, notes, workers).await;
    let labels: Vec<(&str, &str)> = tests
        .iter()
        .map(|t| (t.binary_id.as_str(), t.name.as_str()))
        .collect();
    crate::trace::record(&trace, &labels, &results);
    results
}

/// Provisions a job's services, runs its tests, and removes its test-scope containers.
async fn run_tests(
    job: Job,
    pool: Option<Arc<ServicePool>>,
    no_docker: String,
    notes: mpsc::UnboundedSender<AgentMessage>,
    workers: Arc<Workers>,
) -> Vec<(AttemptKey, AttemptResult)> {
    let all = |r: AttemptResult| -> Vec<(AttemptKey, AttemptResult)> {
        job.tests.iter().map(|t| (t.key, r.clone())).collect()
    };
    let mut cmd = job.cmd.clone();
    let prepared = if job.services.is_empty() {
        None
    } else {
        let Some(pool) = &pool else {
            let why = format!("this agent cannot start services: {no_docker}");
            return all(AttemptResult::infra_error(why));
        };
        match pool.prepare(&job.ctx, &job.services).await {
            Ok(p) => Some(p),
            Err(e) => return all(AttemptResult::infra_error(e)),
        }
    };
    if let Some(p) = &prepared {
        let first = job.tests[0].key;
        for s in &p.starts {
            let _ = notes.send(AgentMessage::ServiceStarted(ServiceStarted {
                run_id: first.run_id,
                lease_id: first.lease_id,
                service: s.service.clone(),
                scope: s.scope,
                duration_ms: s.duration.as_millis() as u64,
                container_id: s.container_id.clone(),
                fingerprint: s.fingerprint.clone(),
            }));
        }
        cmd.env.extend(p.env.clone());
    }
    let mut results = if let Runner::Junit { args, ids } = &job.runner {
        let names = job.names();
        let results = if job.reuse && *ids == IdStyle::Pytest {
            workers.run(&cmd, args, &names, job.cancel.clone()).await
        } else {
            junit::run(&cmd, args, *ids, &names, job.cancel.clone()).await
        };
        job.tests.iter().map(|t| t.key).zip(results).collect()
    } else if let [JobTest { key, .. }] = job.tests.as_slice() {
        let timeout_secs = cmd.timeout.as_secs_f64();
        let finished = executor::run(&cmd, job.cancel.clone()).await;
        let leaked = finished.leaked;
        let mut result = libtest::interpret(finished, timeout_secs);
        if leaked {
            libtest::leaked(
                &mut result,
                job.settings.leak_timeout.is_some_and(|l| l.fails),
            );
        }
        if let Some(period) = job.settings.slow_after {
            libtest::slow(&mut result, period);
        }
        vec![(*key, result)]
    } else {
        let names = job.names();
        let results = libtest_batch::run(&cmd, &names, job.cancel.clone()).await;
        job.tests.iter().map(|t| t.key).zip(results).collect()
    };
    if let (Some(pool), Some(p)) = (&pool, prepared) {
        let failed =
            |r: &AttemptResult| matches!(r.status, AttemptStatus::Failed | AttemptStatus::TimedOut);
        if results.iter().any(|(_, r)| failed(r))
            && let Some(why) = pool.lost_service(&p).await
        {
            for (_, r) in results.iter_mut().filter(|(_, r)| failed(r)) {
                lost_its_service(r, &why);
            }
        }
        pool.finish_test(p).await;
    }
    results
}

/// A test that failed without its service: an infrastructure error (retried, and not counted
/// against the test), with what the test said kept.
fn lost_its_service(r: &mut AttemptResult, why: &str) {
    r.status = AttemptStatus::InfraError;
    r.message = if r.message.is_empty() {
        format!("{why}: the test ran without it, so its failure is not counted")
    } else {
        format!(
            "{why}: the test ran without it, so its failure is not counted (it said: {})",
            r.message
        )
    };
}

/// The services a leased test needs, from the lease's list.
pub(crate) fn services_of(t: &LeasedTest, all: &[ServiceSpec]) -> Result<Vec<ServiceSpec>, String> {
    t.binary
        .services
        .iter()
        .map(|i| {
            all.get(*i as usize)
                .cloned()
                .ok_or_else(|| format!("the lease refers to service #{i}, but has {}", all.len()))
        })
        .collect()
}

/// The workspace root of a lease's run, where service build contexts live.
pub(crate) fn workspace_of(lease: &Lease, root: Option<&Path>) -> Option<PathBuf> {
    let ws = Path::new(&lease.workspace);
    match root {
        _ if lease.workspace.is_empty() => None,
        None => Some(ws.to_path_buf()),
        Some(root)
            if ws.is_relative() && !ws.components().any(|c| matches!(c, Component::ParentDir)) =>
        {
            Some(root.join(ws))
        }
        Some(_) => None,
    }
}

/// Where a lease's bundle paths lead: under the bundle root, or (in the run's sandbox) at the
/// origin of their top directory, which is where tests see them.
pub(crate) struct Layout<'a> {
    pub root: Option<&'a Path>,
    pub origin: &'a [OriginTree],
    pub sandboxed: bool,
}

impl Layout<'_> {
    /// A bundle path must stay inside the bundle: the agent does not trust the lease more than
    /// the coordinator trusted the spec.
    fn resolve(&self, p: &str) -> Result<PathBuf, String> {
        let Some(root) = self.root else {
            return Ok(PathBuf::from(p));
        };
        let rel = Path::new(p);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("path `{p}` would leave the bundle"));
        }
        if !self.sandboxed {
            return Ok(root.join(rel));
        }
        let mut parts = rel.components();
        let top = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        match self
            .origin
            .iter()
            .find(|o| Some(&o.bundle_dir) == top.as_ref())
        {
            Some(o) => Ok(Path::new(&o.path).join(parts.as_path())),
            None => Err(format!("path `{p}` is in no tree of the bundle")),
        }
    }
}

/// Resolves a leased test into a command and its runner: paths as its tests see them, and the
/// environment `cargo test` would give it (`CARGO_MANIFEST_DIR`, `OUT_DIR`, `CARGO_BIN_EXE_*`, the
/// library path), on top of what the agent passes on (`test_env`). A tool's program named without
/// a `/` is looked up on the PATH.
pub(crate) fn command_for(
    config: &AgentConfig,
    lease: &Lease,
    t: &LeasedTest,
    root: Option<&Path>,
    sandbox: Option<&Arc<Sandbox>>,
) -> Result<(TestCommand, Runner), String> {
    let binary = &t.binary;
    let runner = binary.runner.clone();
    let layout = Layout {
        root,
        origin: &lease.origin,
        sandboxed: sandbox.is_some(),
    };
    let program = if runner != Runner::Libtest && !binary.path.contains('/') {
        PathBuf::from(&binary.path)
    } else {
        layout.resolve(&binary.path)?
    };
    let cwd = layout.resolve(&binary.cwd)?;
    if root.is_some() && sandbox.is_none() {
        // Bundles carry only files; a package dir without included files exists only as a cwd.
        // (In a sandbox, the overlay's upper layer takes it when the helper makes it.)
        std::fs::create_dir_all(&cwd)
            .map_err(|e| format!("cannot create `{}`: {e}", cwd.display()))?;
    }
    let remote = root.is_some();
    let mut env = crate::test_env::inherited(remote, &lease.pass_env);
    env.extend(binary.env.clone());
    for (k, v) in &binary.path_env {
        env.insert(k.clone(), layout.resolve(v)?.display().to_string());
    }
    if !binary.library_path.is_empty() {
        let mut dirs = binary
            .library_path
            .iter()
            .map(|d| layout.resolve(d).map(|p| p.display().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        dirs.extend(env.get("LD_LIBRARY_PATH").cloned());
        env.insert("LD_LIBRARY_PATH".into(), dirs.join(":"));
    }
    env.insert("CARGO_MANIFEST_DIR".into(), cwd.display().to_string());
    if let Some(s) = sandbox {
        // The lease's own temporary directory, inside the run's private /tmp.
        let (host, seen) = s.tmp();
        let name = format!("lease-{}", lease.lease_id);
        match std::fs::create_dir(host.join(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(format!("cannot make the lease's temporary directory: {e}"));
            }
            _ => {}
        }
        env.insert("TMPDIR".into(), seen.join(name).display().to_string());
    }
    env.insert("TESTFLEET_ATTEMPT".into(), t.attempt.to_string());
    // What nextest tells each test of its attempt and its test group (tests that coordinate on a
    // shared resource read the group's slot).
    env.insert("NEXTEST_ATTEMPT".into(), t.attempt.to_string());
    match &t.test_group {
        Some(g) => {
            env.insert("NEXTEST_TEST_GROUP".into(), g.name.clone());
            env.insert("NEXTEST_TEST_GROUP_SLOT".into(), g.slot.to_string());
        }
        None => {
            env.insert("NEXTEST_TEST_GROUP".into(), "@global".into());
            env.insert("NEXTEST_TEST_GROUP_SLOT".into(), "none".into());
        }
    }
    env.insert("TESTFLEET_RUN_ID".into(), lease.run_id.to_string());
    env.insert("TESTFLEET_LEASE_ID".into(), lease.lease_id.to_string());
    env.insert(
        crate::orphans::AGENT_ENV.into(),
        config.agent_id.to_string(),
    );
    env.insert(
        crate::orphans::AGENT_DIR_ENV.into(),
        config.work_dir.display().to_string(),
    );
    let args = match runner {
        Runner::Libtest => libtest::args(&t.name),
        Runner::Junit { .. } => vec![], // filled in per process, with the job's tests
    };
    let cmd = TestCommand {
        program,
        args,
        cwd,
        env,
        timeout: t
            .settings
            .timeout
            .unwrap_or(lease.test_timeout)
            .max(Duration::from_millis(1)),
        kill_grace: t.settings.kill_grace.unwrap_or(lease.kill_grace),
        leak_timeout: t.settings.leak_timeout.map(|l| l.period),
        output_cap: lease.output_cap_bytes.clamp(1024, 64 << 20) as usize,
        guard: config.guard.clone(),
        sandbox: sandbox.cloned(),
    };
    Ok((cmd, runner))
}

#[cfg(test)]
mod tests {
    use testfleet_model::{IdStyle, RunId};

    use super::*;

    fn ready(binary: &str, index: u32, runner: &Runner) -> Ready {
        grouped(binary, index, runner, None)
    }

    fn grouped(binary: &str, index: u32, runner: &Runner, group: Option<&str>) -> Ready {
        Ready {
            group: group.map(str::to_owned),
            key: AttemptKey {
                run_id: RunId(1),
                test_index: index,
                attempt: 1,
                lease_id: LeaseId(1),
            },
            name: format!("{binary}::t{index}"),
            binary_id: binary.into(),
            cmd: TestCommand {
                program: "python3".into(),
                args: vec![],
                cwd: "/suite".into(),
                env: Default::default(),
                timeout: Duration::from_secs(1),
                kill_grace: Duration::from_secs(1),
                output_cap: 1024,
                guard: Default::default(),
                sandbox: None,
                leak_timeout: None,
            },
            runner: runner.clone(),
            services: vec![],
            settings: TestSettings::default(),
        }
    }

    /// The binaries of each job the tests become, at `per_process` tests per process on `slots`.
    fn jobs_of(tests: Vec<Ready>, per_process: usize, slots: usize) -> Vec<Vec<String>> {
        let ctx = LeaseCtx {
            run_id: "1".into(),
            lease_id: "1".into(),
            workspace: None,
        };
        let (_tx, cancel) = watch::channel(false);
        jobs(tests, per_process, slots, &cancel, &ctx, &Arc::default())
            .iter()
            .map(|j| j.tests.iter().map(|t| t.binary_id.clone()).collect())
            .collect()
    }

    /// Batch sizes and binaries of the jobs a lease of two binaries' tests becomes.
    fn shape(runner: Runner) -> Vec<Vec<String>> {
        let tests = (0..6)
            .map(|i| ready(if i % 2 == 0 { "a" } else { "b" }, i, &runner))
            .collect();
        jobs_of(tests, 100, 1)
    }

    #[test]
    fn a_group_s_tests_share_one_job_whatever_the_batch_size() {
        let pytest = Runner::Junit {
            args: vec![],
            ids: IdStyle::Pytest,
        };
        // Binaries a..f, every other one in group `g`; four slots would split six tests in jobs of 2.
        let tests = (0..6)
            .map(|i| {
                let binary = ["a", "b", "c", "d", "e", "f"][i as usize];
                grouped(binary, i, &pytest, (i % 2 == 0).then_some("g"))
            })
            .collect();
        assert_eq!(
            jobs_of(tests, 100, 4),
            [vec!["b", "d"], vec!["f"], vec!["a", "c", "e"]]
        );
        // A process per test still keeps a group together.
        let tests = (0..3)
            .map(|i| grouped("a", i, &pytest, Some("g")))
            .collect();
        assert_eq!(jobs_of(tests, 1, 2), [vec!["a", "a", "a"]]);
    }

    #[test]
    fn a_junit_tool_s_batch_spans_its_binaries_and_a_libtest_batch_does_not() {
        let pytest = Runner::Junit {
            args: vec![],
            ids: IdStyle::Pytest,
        };
        assert_eq!(shape(pytest), [["a", "a", "a", "b", "b", "b"]]);
        assert_eq!(shape(Runner::Libtest), [["a", "a", "a"], ["b", "b", "b"]]);
    }
}
