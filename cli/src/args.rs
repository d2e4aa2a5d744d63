//! The command line. Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::security_args::{ConnectArgs, LimitArgs, ServeSecurityArgs};

const EXIT_CODES: &str = "\
Exit codes:
   0  every test passed (flaky and skipped tests do not fail a run)
   1  unexpected internal error
   2  invalid command line
  10  at least one test failed or timed out
  11  tests ended in infrastructure errors, or the run was cancelled
  20  neither a Cargo project nor a tool suite (a testfleet.toml naming a [runner])
  21  a selected package is not in the workspace
  22  building the tests failed
  23  a test binary could not list its tests
  24  no test selected
  25  the suite manifest is invalid or a prepare command failed
  30  the coordinator could not be reached
  31  the coordinator rejected the request
  32  the test bundle could not be built, uploaded or verified
  40  a coordinator or agent could not start";

#[derive(Parser, Debug)]
#[command(name = "testfleet", version, about = "Run a project's test suites across a fleet of agents", after_help = EXIT_CODES)]
pub struct Cli {
    /// Log filter for testfleet's own diagnostics (e.g. `info`, `testfleet_agent=debug`).
    #[arg(long, global = true, env = "TESTFLEET_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a suite on local agents or a coordinator's fleet: a Cargo workspace's tests (built
    /// first), or a suite another tool runs (pytest, a command) named by testfleet.toml's `[runner]`.
    #[command(after_help = EXIT_CODES)]
    Run(Box<RunArgs>),
    /// One job of a parallel CI pipeline: every job joins the same run (by its key) and works on
    /// it as an agent; tests are handed out across the jobs as they free up; each job exits with
    /// the run's status.
    #[command(after_help = CI_HELP)]
    Ci(Box<CiArgs>),
    /// Serve the coordinator: accepts runs, schedules tests on agents, keeps history.
    Coordinator(CoordinatorArgs),
    /// Run an agent: connects to a coordinator and runs the tests it is given.
    Agent(AgentArgs),
    /// List the agents connected to a coordinator.
    Agents(AgentsArgs),
    /// Tests that passed and failed on the same revision, with their evidence.
    Flaky(FlakyArgs),
    /// Test durations (p50/p95/p99) and slowdowns.
    Timings(TimingsArgs),
    /// One test's record: recent attempts, durations, flakiness, quarantine.
    History(HistoryArgs),
    /// Recent runs and their summaries.
    Runs(RunsArgs),
    /// (Internal) the guard process of an agent: kills its tests if it dies.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// Processes whose environment carries this as `TESTFLEET_GUARD` die with the agent.
        token: Option<String>,
    },
    /// Keep flaky tests from failing runs while they keep running and being recorded.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Print a new random token (256 bits, hex) for a coordinator's tokens file.
    Token,
    /// Load results of other test tools into history.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// JUnit XML files (from pytest, Maven, Gradle, Jest, go-junit-report, testfleet itself...)
    /// as one finished run: their durations, failures and flaky retries join the suite's history,
    /// its flakiness verdicts and its schedules.
    Junit(ImportJunitArgs),
}

#[derive(Args, Debug)]
pub struct ImportJunitArgs {
    /// The JUnit XML files; a test named in several of them gathers all its attempts.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The revision the results are of (flaky verdicts compare attempts of one revision).
    #[arg(long)]
    pub revision: Option<String>,
    /// The branch the results are of.
    #[arg(long)]
    pub branch: Option<String>,
    /// The suite the run belongs to (flaky verdicts and timings are per suite).
    #[arg(long, default_value = "junit")]
    pub suite: String,
    /// Import into this coordinator's history instead of the local data dir.
    #[arg(long, env = "TESTFLEET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The local data dir [default: `.testfleet` in the tool suite here (a testfleet.toml naming a
    /// `[runner]`), else in the Cargo workspace around the current dir].
    #[arg(long, env = "TESTFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cargo.toml of the workspace whose local history to import into.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Print the imported run as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Where history queries go: a coordinator, or the local data dir.
#[derive(Args, Debug, Clone, Default)]
pub struct QueryArgs {
    /// Ask this coordinator instead of the local data dir.
    #[arg(long, env = "TESTFLEET_COORDINATOR", global = true)]
    pub coordinator: Option<String>,
    /// The local data dir [default: `.testfleet` in the tool suite here (a testfleet.toml naming a
    /// `[runner]`), else in the Cargo workspace around the current dir].
    #[arg(long, env = "TESTFLEET_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Cargo.toml of the workspace whose local history to read.
    #[arg(long, value_name = "PATH", global = true)]
    pub manifest_path: Option<PathBuf>,
    /// Only this suite (a workspace's directory name) [default: all].
    #[arg(long, global = true)]
    pub suite: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct FlakyArgs {
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Args, Debug)]
pub struct TimingsArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    /// How many of the slowest tests (by p95) to show.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only tests that got slower: median of the last 5 passing runs against the 30 before.
    #[arg(long)]
    pub slowdowns: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    /// The test: its name, or `BINARY NAME`, or a part of either.
    pub test: String,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only runs older than this one: the next page after a listing whose last run it is.
    #[arg(long, value_name = "RUN")]
    pub before: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// Quarantine a test: it still runs and is recorded, but its failures do not fail runs.
    Add {
        #[command(flatten)]
        query: QueryArgs,
        /// The test: its name, or `BINARY NAME`.
        test: String,
        /// Why (shown in lists and reports).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a test out of quarantine.
    Remove {
        #[command(flatten)]
        query: QueryArgs,
        test: String,
    },
    /// List quarantined tests.
    List {
        #[command(flatten)]
        query: QueryArgs,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run only tests whose name contains one of these strings.
    pub filters: Vec<String>,
    /// Run only tests this filterset selects, in cargo-nextest's language (`test()`, `package()`,
    /// `binary()`, `binary_id()`, `kind()`, `deps()`, `rdeps()`, `all()`, `none()`; `not` `!`,
    /// `and` `&`, `or` `|` `+`, `-`; matchers `=exact`, `~contains`, `/regex/`, `#glob`).
    /// Repeated: any of them. With name filters too: tests must match both.
    #[arg(short = 'E', long = "filterset", value_name = "EXPR")]
    pub filtersets: Vec<String>,
    /// The profile of the workspace's `.config/nextest.toml` whose settings apply: test groups
    /// (held fleet-wide), threads-required, slow-timeout, leak-timeout, retries and overrides
    /// [default: `default`].
    #[arg(long = "profile", env = "NEXTEST_PROFILE", value_name = "NAME")]
    pub nextest_profile: Option<String>,
    /// Also run the tests the nextest profile's `default-filter` leaves out.
    #[arg(long)]
    pub ignore_default_filter: bool,
    /// Run again only the tests that did not pass in the last finished run of this suite (or in
    /// run RUN): those that failed, timed out, hit an infrastructure error or were cancelled. The
    /// history is the coordinator's, or with `--local` the suite's local one.
    #[arg(long, value_name = "RUN", num_args = 0..=1, default_missing_value = "last")]
    pub failed: Option<String>,

    /// Submit to this coordinator (e.g. `http://build-1:7420`) instead of running locally.
    #[arg(long, env = "TESTFLEET_COORDINATOR", conflicts_with = "local")]
    pub coordinator: Option<String>,
    /// Run on an embedded coordinator with this many local agents (the default mode).
    #[arg(long, value_name = "AGENTS")]
    pub local: Option<u32>,
    /// Concurrent tests per local agent [default: CPUs / agents, at least 1].
    #[arg(long)]
    pub slots: Option<u32>,
    /// History of local runs lives here [default: `.testfleet` in the workspace root].
    #[arg(long, env = "TESTFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Retries of a failed test [default: 0 locally, the coordinator's setting otherwise].
    #[arg(long)]
    pub retries: Option<u32>,
    /// Per-test timeout in seconds; the test's process group is then terminated.
    #[arg(long, default_value_t = 300.0, value_name = "SECS", value_parser = positive_secs)]
    pub timeout: f64,
    /// Seconds between SIGTERM and SIGKILL for a timed-out test.
    #[arg(long, default_value_t = 5.0, value_name = "SECS", value_parser = non_negative_secs)]
    pub kill_grace: f64,
    /// Output kept per test attempt, in bytes (head and tail).
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub output_cap: u64,

    /// The suite manifest: the services tests need, and (`[runner]`) the tool that runs a suite
    /// which is not a Cargo workspace's, such as pytest [default: `testfleet.toml` in the current
    /// directory if it names a runner, else in the workspace root, if there is one].
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Run local agents without Docker: tests that need services cannot run.
    #[arg(long)]
    pub no_docker: bool,

    /// Also put these files or directories (relative to the workspace root) into the bundle, even
    /// where git ignores them (every file git would not ignore is bundled anyway).
    #[arg(long = "include", value_name = "PATH")]
    pub includes: Vec<PathBuf>,
    /// Refuse to upload a bundle larger than this (bytes before compression); the error names
    /// its largest directories.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 30)]
    pub max_bundle_bytes: u64,
    /// How the bundle goes to a coordinator: `files` sends only the files it lacks (each kept by
    /// digest, so a one-line change sends the binaries it changed); `archive` sends one archive
    /// of everything, as coordinators and agents before content-addressed bundles need. A
    /// coordinator that does not take files is sent an archive anyway.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = BundleFormat::Files)]
    pub bundle_format: BundleFormat,
    /// Print a GitHub Actions `::error` annotation for each failed test at the end of the run, at
    /// the file and line of its panic (or of pytest's traceback) [default: on when
    /// `GITHUB_ACTIONS=true`; `--github-annotations=false` turns it off].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub github_annotations: Option<bool>,
    /// The branch whose last run of each failed test tells, in the Markdown summary, whether it
    /// was failing already (else: new, known flaky, or quarantined).
    #[arg(
        long,
        env = "TESTFLEET_DEFAULT_BRANCH",
        default_value = "main",
        value_name = "NAME"
    )]
    pub default_branch: String,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Append a Markdown summary of the run to PATH when it ends (for CI job summaries, e.g.
    /// `--markdown-summary "$GITHUB_STEP_SUMMARY"`).
    #[arg(long, value_name = "PATH")]
    pub markdown_summary: Option<PathBuf>,

    /// Batch mode: run up to N tests in one process, for suites whose tests do not need a fresh
    /// process each (much less start-up cost per test): a Rust binary's tests, a `command` tool's
    /// ids; a pytest suite's tests run on long-lived pytest workers. Each test keeps its own
    /// result, duration, output and timeout; a crash or timeout fails only the test that was
    /// running, and the rest run again in a new process.
    ///
    /// Default: 1 for Rust test binaries (a process per test); 100 for a `[runner]` tool. 1 for a
    /// pytest suite starts a fresh pytest process per test.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=testfleet_model::RunSpec::MAX_TESTS_PER_PROCESS as i64)
    )]
    pub tests_per_process: Option<u32>,
    /// Print events as JSON lines on stdout instead of the human report (every attempt with its
    /// output, passing ones too; the other reports show only failures' output).
    #[arg(long)]
    pub json: bool,
    /// Submit and exit, printing the run id; the run goes on (`--coordinator` only). Watch it with
    /// `testfleet runs`, cancel it by id with the coordinator's API.
    #[arg(long, requires = "coordinator")]
    pub detach: bool,
    /// Git revision recorded with the run [default: the workspace's HEAD].
    #[arg(long)]
    pub revision: Option<String>,
    /// Branch recorded with the run [default: the workspace's current branch; on a detached
    /// checkout, GitHub Actions' `GITHUB_HEAD_REF` or `GITHUB_REF_NAME`].
    #[arg(long, env = "TESTFLEET_BRANCH", value_name = "NAME")]
    pub branch: Option<String>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub cargo: CargoArgs,
}

/// Passed through to `cargo test --no-run`.
#[derive(Args, Debug, Default, Clone)]
pub struct CargoArgs {
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Package(s) to test.
    #[arg(short, long = "package", value_name = "SPEC")]
    pub packages: Vec<String>,
    /// Test all packages in the workspace.
    #[arg(long)]
    pub workspace: bool,
    /// Exclude packages from the test.
    #[arg(long, value_name = "SPEC", requires = "workspace")]
    pub exclude: Vec<String>,
    /// Features to activate.
    #[arg(short = 'F', long, value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Activate all features.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    pub no_default_features: bool,
    /// Build in release mode.
    #[arg(long)]
    pub release: bool,
    /// Build with this Cargo profile.
    #[arg(long, value_name = "NAME", conflicts_with = "release")]
    pub cargo_profile: Option<String>,
}

impl RunArgs {
    /// Whether to print GitHub Actions annotations: as asked, else inside GitHub Actions.
    pub fn annotate(&self) -> bool {
        self.github_annotations
            .unwrap_or_else(|| std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true"))
    }
}

impl CargoArgs {
    /// Whether any option that selects or builds Cargo packages was given (a suite run by another
    /// tool has none to apply them to).
    pub fn any_build_option(&self) -> bool {
        !self.packages.is_empty()
            || self.workspace
            || !self.exclude.is_empty()
            || !self.features.is_empty()
            || self.all_features
            || self.no_default_features
            || self.release
            || self.cargo_profile.is_some()
    }
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420", env = "TESTFLEET_LISTEN")]
    pub listen: SocketAddr,
    /// Also serve HTTP here: the dashboard at `/`, Prometheus metrics at `/metrics` (both need a
    /// reader or client token when tokens are set), and the probes `/healthz` and `/readyz`.
    #[arg(long, value_name = "ADDR", env = "TESTFLEET_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Where history (sled) and uploaded bundles are kept.
    #[arg(long, env = "TESTFLEET_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Days an uploaded bundle is kept after its last use (its upload, or a run that named it);
    /// bundles of unfinished runs are always kept. 0 keeps every bundle.
    #[arg(long, value_name = "DAYS", default_value_t = testfleet_coordinator::DEFAULT_BUNDLE_RETENTION_DAYS)]
    pub bundle_retention_days: u32,
    /// Retries for runs that do not set `--retries`.
    #[arg(long, default_value_t = 2)]
    pub default_retries: u32,
    /// Seconds tests that need services wait while no connected agent has Docker, before they
    /// end as infrastructure errors.
    #[arg(long, default_value_t = 15.0, value_name = "SECS", value_parser = non_negative_secs)]
    pub service_grace: f64,
    /// Seconds an agent may be disconnected, or silent, before its leases are requeued.
    #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = positive_secs)]
    pub lease_timeout: f64,
    /// Runs kept in history; older ones are pruned.
    #[arg(long, default_value_t = testfleet_coordinator::history::DEFAULT_KEEP_RUNS)]
    pub keep_runs: u64,
    /// Memory for history's page cache (sled's), in bytes. Smaller holds less at a cost in
    /// results written per second: 16 MiB took about 20 MiB off the ingest benchmark's peak and
    /// 5-10% off its rate; 64 MiB added about 30 MiB for the same rate (docs/benchmarks.md).
    #[arg(long, value_name = "BYTES", default_value_t = testfleet_coordinator::history::DEFAULT_CACHE_BYTES, value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub history_cache_bytes: u64,
    #[command(flatten)]
    pub security: ServeSecurityArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

const CI_HELP: &str = "\
Every job of the pipeline runs the same command with the same --run-key (the pipeline's id) and its
own --node. A job that finds no run under the key builds the tests, uploads them and submits; the
first submission creates the run and the others join it; a job that comes once the run exists
joins without building. Each job then runs tests as an agent named after the key and its
node until the run is over, and exits with the run's exit code. A job that dies loses nothing: its
tests go back to the queue (at once when the job is retried, since it comes back under the same
name); a job stopped by the CI system leaves the run to the others.

  GitHub Actions:  testfleet ci --run-key \"$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT\" \\
                       --node \"${{ strategy.job-index }}\" --nodes \"${{ strategy.job-total }}\" \\
                       --markdown-summary \"$GITHUB_STEP_SUMMARY\"
  GitLab CI:       testfleet ci --run-key \"$CI_PIPELINE_ID\" \\
                       --node $((CI_NODE_INDEX - 1)) --nodes \"$CI_NODE_TOTAL\"

A coordinator with tokens wants a token of role `ci` here (TESTFLEET_TOKEN or --token-file): the
job both submits and runs tests. More, with GitHub Actions and GitLab CI examples: docs/ci.md.";

#[derive(Args, Debug)]
pub struct CiArgs {
    /// The pipeline's run key: the same for every job of one pipeline run, new for the next.
    #[arg(long, env = "TESTFLEET_RUN_KEY", value_name = "KEY")]
    pub run_key: String,
    /// This job's index, from 0.
    #[arg(long, env = "TESTFLEET_NODE", value_name = "I")]
    pub node: u32,
    /// How many jobs the pipeline runs.
    #[arg(long, env = "TESTFLEET_NODES", value_name = "N")]
    pub nodes: u32,
    /// This job's agent's scratch space (bundle cache, test working dirs).
    #[arg(long, default_value = "target/testfleet/ci-agent", value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Run this job's tests without a private namespace (see `testfleet agent --no-sandbox`).
    #[arg(long)]
    pub no_sandbox: bool,
    /// The pipeline's attempt, from 1: a re-run of the pipeline (or of its failed jobs) under the
    /// same run key runs only the tests that did not pass in its earlier attempts, and each job
    /// exits with the status of the whole [default: `GITHUB_RUN_ATTEMPT`, else 1].
    #[arg(long, env = "TESTFLEET_CI_ATTEMPT", value_name = "N")]
    pub attempt: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The coordinator's URL, e.g. `http://build-1:7420`.
    #[arg(long, env = "TESTFLEET_COORDINATOR")]
    pub coordinator: String,
    /// Concurrent tests [default: CPU count].
    #[arg(long)]
    pub slots: Option<u32>,
    /// Bundle cache and scratch space for this agent (one per agent).
    #[arg(long, env = "TESTFLEET_WORK_DIR")]
    pub work_dir: PathBuf,
    /// Hours a cached bundle is kept after the last lease that needed it (a bundle removed is
    /// downloaded again when needed). 0 keeps every bundle.
    #[arg(long, value_name = "HOURS", default_value_t = testfleet_agent::bundle_cache::DEFAULT_RETENTION_HOURS)]
    pub bundle_cache_hours: u32,
    /// Free space on the work dir's filesystem below which the agent takes no more work (it says
    /// so, and takes work again by itself once there is room).
    #[arg(long, value_name = "BYTES", default_value_t = testfleet_agent::disk_room::DEFAULT_MIN_FREE_BYTES)]
    pub min_free_bytes: u64,
    /// This agent's name [default: kept in the work dir, created on first start].
    #[arg(long, env = "TESTFLEET_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Run remote runs' tests without a private namespace (their bundle at its origin paths, the
    /// agent's files hidden): only for machines where namespaces are forbidden.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Labels reported to the coordinator, as KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Do not start services: this agent takes only tests that need none.
    #[arg(long)]
    pub no_docker: bool,
    /// When to pull a service's image from its registry, for services whose `testfleet.toml`
    /// does not say (`pull = ...`): `missing` (when the engine lacks it), `always` (once per run)
    /// or `never` (the image must be on the engine). Credentials come from DOCKER_AUTH_CONFIG,
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long, value_name = "POLICY", default_value = "missing", value_parser = pull_policy, env = "TESTFLEET_PULL")]
    pub pull: testfleet_model::PullPolicy,
    /// Seconds a pull may take, for services that do not set `pull_timeout`.
    #[arg(long, value_name = "SECS", default_value_t = testfleet_agent::provision::DEFAULT_PULL_TIMEOUT.as_secs_f64(), value_parser = pull_secs)]
    pub pull_timeout: f64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn pull_policy(s: &str) -> Result<testfleet_model::PullPolicy, String> {
    s.parse()
}

fn pull_secs(s: &str) -> Result<f64, String> {
    let v = positive_secs(s)?;
    if v > testfleet_model::MAX_PULL_TIMEOUT.as_secs_f64() {
        return Err(format!("`{s}` is more than 3600 seconds"));
    }
    Ok(v)
}

#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// The coordinator's URL.
    #[arg(long, env = "TESTFLEET_COORDINATOR")]
    pub coordinator: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_secs(s: &str, allow_zero: bool) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    let ok = v.is_finite() && v < 1e9 && (v > 0.0 || (allow_zero && v == 0.0));
    ok.then_some(v).ok_or_else(|| {
        format!(
            "`{s}` must be {} and finite",
            if allow_zero {
                "0 or more"
            } else {
                "more than 0"
            }
        )
    })
}

fn positive_secs(s: &str) -> Result<f64, String> {
    parse_secs(s, false)
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    parse_secs(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_code_help_matches_the_model() {
        for (code, _) in testfleet_model::exit_code::ALL {
            assert!(
                EXIT_CODES.contains(&format!("\n  {code:>2}  ")),
                "exit code {code} is not documented in --help"
            );
        }
        assert_eq!(
            EXIT_CODES.lines().count() - 1,
            testfleet_model::exit_code::ALL.len()
        );
    }

    #[test]
    fn durations_must_be_sane() {
        for bad in ["0", "-1", "nan", "inf", "soon"] {
            assert!(
                Cli::try_parse_from(["testfleet", "run", "--timeout", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(
            Cli::try_parse_from(["testfleet", "run", "--timeout", "0.5", "--kill-grace", "0"])
                .is_ok()
        );
    }

    #[test]
    fn local_and_coordinator_exclude_each_other() {
        let err = Cli::try_parse_from([
            "testfleet",
            "run",
            "--local",
            "2",
            "--coordinator",
            "http://x:1",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}

/// How a run's bundle goes to a coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormat {
    /// A manifest and only the files the coordinator lacks.
    Files,
    /// One archive of every file.
    Archive,
}
