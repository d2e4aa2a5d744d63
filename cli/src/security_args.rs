//! The command line's security and limit options, and how they become the settings the coordinator,
//! agents and clients use. Tokens are read only from files or the environment: a token on the
//! command line would show in `ps` and shell history.

use std::path::PathBuf;

use clap::Args;
use testfleet_coordinator::Limits;
use testfleet_security::{ClientSecurity, ClientTls, Secret, ServerTls, TokenSet};

use crate::error::{CliError, CliResult};

/// The environment variable holding a client's or agent's token (or use `--token-file`).
pub const TOKEN_ENV: &str = "TESTFLEET_TOKEN";
/// The environment variable holding the coordinator's token set (or use `--tokens-file`).
pub const TOKENS_ENV: &str = "TESTFLEET_TOKENS";

/// How a client or agent reaches a coordinator securely.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// File holding this client's or agent's token [default: the TESTFLEET_TOKEN environment
    /// variable]. Tokens are never taken from the command line.
    #[arg(long, value_name = "PATH", env = "TESTFLEET_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the coordinator's certificate must chain to, for `https://` URLs
    /// [default: the system's trusted roots].
    #[arg(long, value_name = "PATH", env = "TESTFLEET_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a coordinator that requires mutual TLS.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTFLEET_TLS_CERT",
        requires = "tls_key",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// The key (PEM) of `--tls-cert`.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTFLEET_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    pub tls_key: Option<PathBuf>,
    /// The name the coordinator's certificate carries, when it differs from the URL's host.
    #[arg(long, value_name = "NAME", env = "TESTFLEET_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// Seconds a client (run, ci, queries, import) keeps trying a coordinator that refuses
    /// connections or says it is unavailable (a restart, a rolling upgrade) before giving up; 0
    /// gives up at once. Watching a run already submitted always re-attaches for up to a minute;
    /// an agent keeps trying for as long as it runs.
    #[arg(
        long,
        value_name = "SECS",
        env = "TESTFLEET_CONNECT_WAIT",
        default_value_t = DEFAULT_CONNECT_WAIT_SECS,
        global = true
    )]
    pub connect_wait: u64,
}

/// How long a client keeps trying a coordinator that is unavailable unless told otherwise: longer
/// than a coordinator takes to restart and resume its runs.
pub const DEFAULT_CONNECT_WAIT_SECS: u64 = 30;

impl ConnectArgs {
    /// How long to keep trying a coordinator that is unavailable.
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_wait)
    }

    pub fn security(&self) -> CliResult<ClientSecurity> {
        let token = Secret::load(self.token_file.as_deref(), TOKEN_ENV)
            .map_err(|e| CliError::Config(e.to_string()))?;
        let any_tls = self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_domain.is_some();
        Ok(ClientSecurity {
            token,
            tls: any_tls.then(|| ClientTls {
                ca: self.tls_ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                domain: self.tls_domain.clone(),
            }),
        })
    }
}

/// Who may talk to the coordinator, and over what.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeSecurityArgs {
    /// File of accepted tokens, one `ROLE NAME TOKEN` per line (roles: client, reader, agent, ci)
    /// [default: the TESTFLEET_TOKENS environment variable, same format]. Make tokens with
    /// `testfleet token`.
    #[arg(long, value_name = "PATH", env = "TESTFLEET_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve without tokens on an address other machines can reach: anyone who can connect can
    /// then run code on every agent. Without tokens, only loopback addresses are served.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// The coordinator's TLS certificate (PEM); with `--tls-key`, the coordinator speaks only TLS.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTFLEET_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The key (PEM) of `--tls-cert`.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTFLEET_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require mutual TLS: every client and agent must present a certificate signed by this CA.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTFLEET_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServeSecurityArgs {
    pub fn tokens(&self) -> CliResult<Option<TokenSet>> {
        TokenSet::load(self.tokens_file.as_deref(), TOKENS_ENV)
            .map_err(|e| CliError::Config(e.to_string()))
    }

    pub fn tls(&self) -> Option<ServerTls> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// The coordinator's limits; hitting one refuses that request with an error naming the flag.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest gRPC message accepted or sent, in bytes (a run's spec is the largest).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Most tests in one run (a run spec never holds more than 1,000,000).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_tests_per_run)]
    pub max_tests_per_run: usize,
    /// Most output a run may keep per test attempt, in bytes (`run --output-cap`).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_output_bytes)]
    pub max_output_bytes: u64,
    /// Largest bundle accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_bundle_bytes)]
    pub max_bundle_bytes: u64,
    /// Most runs running at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_concurrent_runs)]
    pub max_concurrent_runs: usize,
    /// Most agents connected at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_agents)]
    pub max_agents: usize,
    /// Results (with their output) waiting between agents and the disk, in bytes. Past it the
    /// coordinator acknowledges results only as the history writer catches up, and agents wait
    /// before taking more tests: the fleet slows down, the coordinator's memory does not grow.
    /// At least --max-output-bytes and 64 KiB, so that the largest result fits.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_pending_result_bytes)]
    pub max_pending_result_bytes: u64,
    /// What runs may hold in memory in all: their specs, their tests' state and the in-memory part
    /// of their event logs (about 200 bytes per test, plus each run's log share). Past it,
    /// finished runs leave memory early, and then new runs are refused until running ones finish.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_runs_memory_bytes)]
    pub max_runs_memory_bytes: u64,
    /// How much of each run's event log stays in memory; older events go to the data dir and are
    /// read back from there when a client watches the run from its start.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().run_log_memory_bytes)]
    pub run_log_memory_bytes: u64,
    /// Free space to keep on the data dir's filesystem, in bytes. Below it the coordinator refuses
    /// new runs, bundle uploads and imports, and holds results it has not written (agents keep
    /// them, unacknowledged) until there is room again; running runs go on as far as that allows.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().min_free_bytes)]
    pub min_free_bytes: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> CliResult<Limits> {
        // `why`: what the minimum is made of, when it is not a plain number.
        let at_least = |name: &str, v: u64, min: u64, why: &str| {
            if v < min {
                Err(CliError::Config(format!(
                    "--{name} must be at least {min}{why}"
                )))
            } else {
                Ok(())
            }
        };
        at_least(
            "max-message-bytes",
            self.max_message_bytes as u64,
            64 << 10,
            "",
        )?;
        at_least("max-tests-per-run", self.max_tests_per_run as u64, 1, "")?;
        at_least("max-output-bytes", self.max_output_bytes, 1024, "")?;
        at_least(
            "max-concurrent-runs",
            self.max_concurrent_runs as u64,
            1,
            "",
        )?;
        at_least("max-agents", self.max_agents as u64, 1, "")?;
        at_least(
            "max-pending-result-bytes",
            self.max_pending_result_bytes,
            self.max_output_bytes + (64 << 10),
            " (--max-output-bytes and 64 KiB: the largest result must fit)",
        )?;
        at_least(
            "max-runs-memory-bytes",
            self.max_runs_memory_bytes,
            1 << 20,
            "",
        )?;
        at_least(
            "run-log-memory-bytes",
            self.run_log_memory_bytes,
            256 << 10,
            "",
        )?;
        Ok(Limits {
            max_message_bytes: self.max_message_bytes,
            max_tests_per_run: self.max_tests_per_run,
            max_output_bytes: self.max_output_bytes,
            max_bundle_bytes: self.max_bundle_bytes,
            max_concurrent_runs: self.max_concurrent_runs,
            max_agents: self.max_agents,
            max_pending_result_bytes: self.max_pending_result_bytes,
            max_runs_memory_bytes: self.max_runs_memory_bytes,
            run_log_memory_bytes: self.run_log_memory_bytes,
            min_free_bytes: self.min_free_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn limits(args: &[&str]) -> CliResult<Limits> {
        Line::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied()))
            .expect("the line parses")
            .limits
            .limits()
    }

    /// The results' budget must hold the largest result, and says so; a smaller output cap
    /// allows a smaller budget.
    #[test]
    fn the_results_budget_must_hold_the_largest_result() {
        let small = ["--max-pending-result-bytes", "1048576"];
        let err = limits(&small).unwrap_err().to_string();
        assert!(
            err.contains("--max-pending-result-bytes must be at least 16842752")
                && err.contains("--max-output-bytes"),
            "{err}"
        );
        let capped = limits(&[&small[..], &["--max-output-bytes", "65536"]].concat()).unwrap();
        assert_eq!(capped.max_pending_result_bytes, 1 << 20);
        assert_eq!(
            limits(&[]).unwrap().max_pending_result_bytes,
            testfleet_coordinator::Limits::default().max_pending_result_bytes
        );
    }
}
