//! `testfleet coordinator`: serves the fleet until SIGTERM or Ctrl-C.

use std::sync::Arc;

use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_model::exit_code;
use testfleet_security::Role;

use crate::args::CoordinatorArgs;
use crate::error::{CliError, CliResult};

/// Pending connections the kernel holds for the coordinator: a fleet of agents reconnecting at
/// once after a restart must not overflow it (the default of 128 did at 1,000 agents).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Before the runtime starts: no transparent huge pages for this process. Its allocator marks its
/// arena for them, and a long-lived server whose memory is mostly small values then holds 2 MiB
/// pages it uses a fraction of (the ingest benchmark's peak RSS was about 80 MiB higher with them,
/// at the same throughput: docs/benchmarks.md). Only the standalone coordinator: the setting is
/// inherited, and processes that run tests must see the machine as it is.
pub(super) fn before_runtime() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot turn huge pages off");
    }
}

pub async fn run(args: CoordinatorArgs) -> CliResult<i32> {
    let limits = args.limits.limits()?;
    let tokens = args.security.tokens()?;
    let tls = args.security.tls();
    if tokens.is_none() && !args.listen.ip().is_loopback() && !args.security.allow_unauthenticated {
        return Err(CliError::Config(format!(
            "refusing to serve {} without tokens: anyone who can connect could run code on every agent. \
             Give --tokens-file (make tokens with `testfleet token`), listen on a loopback address, \
             or pass --allow-unauthenticated on a network you trust",
            args.listen
        )));
    }
    if let Some(http) = args.http_listen
        && tokens.is_none()
        && !http.ip().is_loopback()
        && !args.security.allow_unauthenticated
    {
        return Err(CliError::Config(format!(
            "refusing to serve the dashboard and metrics on {http} without tokens: anyone who can \
             connect could read every run's tests and history. Give --tokens-file, use a loopback \
             address, or pass --allow-unauthenticated on a network you trust"
        )));
    }
    let store = SledStore::open_with_cache(&args.data_dir, args.history_cache_bytes)
        .map_err(|e| CliError::Server(e.to_string()))?
        .with_retention(args.keep_runs);
    let listener = bind(args.listen)
        .map_err(|e| CliError::Server(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Internal(e.into()))?;
    let http = match args.http_listen {
        Some(a) => Some(
            bind(a).map_err(|e| CliError::Server(format!("cannot listen on {a} (HTTP): {e}")))?,
        ),
        None => None,
    };
    let http_addr = http
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| CliError::Internal(e.into()))?;
    let mut config = CoordinatorConfig::new(&args.data_dir);
    config.scheduler.default_retries = args.default_retries;
    config.scheduler.service_grace = std::time::Duration::from_secs_f64(args.service_grace);
    config.scheduler.lease_timeout = std::time::Duration::from_secs_f64(args.lease_timeout);
    config.limits = limits;
    config.bundle_retention = (args.bundle_retention_days > 0)
        .then(|| std::time::Duration::from_secs(u64::from(args.bundle_retention_days) * 86_400));
    match &tokens {
        Some(t) => tracing::info!(
            clients = t.count(Role::Client),
            readers = t.count(Role::Reader),
            agents = t.count(Role::Agent),
            ci = t.count(Role::Ci),
            "tokens loaded: every request needs one"
        ),
        None => tracing::warn!(
            %addr,
            "no tokens: every request is accepted; anyone who can connect can run code on the agents"
        ),
    }
    if tls.is_none() && tokens.is_some() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "tokens without TLS travel in clear text: give --tls-cert and --tls-key");
    }
    config.tokens = tokens;
    config.tls = tls;
    // Scripts (and tests binding port 0) read the addresses from these first lines of stdout,
    // written at once.
    let mut banner = format!("testfleet coordinator listening on {addr}\n");
    if let Some(h) = http_addr {
        banner.push_str(&format!("testfleet dashboard and metrics on http://{h}/\n"));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    if let Some(h) = http_addr
        && config.tokens.is_some()
        && !h.ip().is_loopback()
    {
        tracing::warn!(addr = %h, "the HTTP side is plain HTTP: tokens sent to it travel in clear text; put it behind a TLS proxy or keep it on a private network");
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), tls = config.tls.is_some(), mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "coordinator started");
    testfleet_coordinator::serve_with_http(
        listener,
        http,
        config,
        Arc::new(store),
        crate::process::termination(),
    )
    .await
    .map_err(|e| CliError::Server(e.to_string()))?;
    tracing::info!("coordinator stopped");
    Ok(exit_code::SUCCESS)
}
