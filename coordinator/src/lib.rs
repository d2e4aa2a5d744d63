//! The testfleet coordinator: accepts runs, orders their tests by what history says they cost, and
//! leases them to agents. [`serve`] runs the whole thing on an already-bound listener, so tests and
//! the CLI's local mode embed it the same way the `coordinator` command does.

pub mod api;
pub mod blobs;
pub mod bundles;
pub mod data_room;
pub mod history;
mod http;
pub mod limits;
pub mod metrics;
pub mod run_trace;
pub mod scheduler;
mod store_call;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testfleet_proto::pb;
use testfleet_security::{AuthLayer, ServerTls, TokenSet};
use tokio::net::TcpListener;

pub use history::{HistoryStore, SledStore};
pub use limits::Limits;
pub use scheduler::SchedulerConfig;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub scheduler: SchedulerConfig,
    /// Where uploaded bundles are kept.
    pub bundle_dir: PathBuf,
    /// Where runs' event logs go past their share of memory (emptied at start: a resumed run's
    /// log starts anew); `None` keeps them in memory.
    pub event_log_dir: Option<PathBuf>,
    /// The data dir whose free space is kept above `limits.min_free_bytes`; `None` checks none.
    pub data_dir: Option<PathBuf>,
    pub limits: Limits,
    /// The tokens accepted; `None` lets every request in (only sensible where nobody else can
    /// connect: the CLI refuses it on a non-loopback address unless told otherwise).
    pub tokens: Option<TokenSet>,
    pub tls: Option<ServerTls>,
    /// Bundles no run has used for this long (and no unfinished run names) are removed;
    /// `None` keeps them all.
    pub bundle_retention: Option<Duration>,
}

/// How long an unused bundle is kept unless told otherwise.
pub const DEFAULT_BUNDLE_RETENTION_DAYS: u32 = 7;

impl CoordinatorConfig {
    pub fn new(data_dir: &std::path::Path) -> Self {
        CoordinatorConfig {
            scheduler: SchedulerConfig::default(),
            bundle_dir: data_dir.join("bundles"),
            event_log_dir: Some(data_dir.join("event-logs")),
            data_dir: Some(data_dir.to_owned()),
            limits: Limits::default(),
            tokens: None,
            tls: None,
            bundle_retention: Some(Duration::from_secs(
                u64::from(DEFAULT_BUNDLE_RETENTION_DAYS) * 86_400,
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to prepare the bundle store `{}`: {source}", path.display())]
    BundleDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Security(#[from] testfleet_security::SecurityError),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Serves both gRPC services on `listener` until `shutdown` resolves, then stops the scheduler,
/// ends every agent session and watch stream, and waits for history to be written.
pub async fn serve(
    listener: TcpListener,
    config: CoordinatorConfig,
    store: Arc<dyn HistoryStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_http(listener, None, config, store, shutdown).await
}

/// [`serve`], and with `http` the health probes, `/metrics` and the dashboard on that listener.
pub async fn serve_with_http(
    listener: TcpListener,
    http: Option<TcpListener>,
    config: CoordinatorConfig,
    store: Arc<dyn HistoryStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let limits = config.limits.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        // Read before anything starts, so a bad certificate path fails the start with its name.
        builder = builder.tls_config(tls.config()?)?;
    }
    let bundles = bundles::BundleStore::open(&config.bundle_dir, limits.max_bundle_bytes).map_err(
        |source| ServeError::BundleDir {
            path: config.bundle_dir.clone(),
            source,
        },
    )?;
    if let Some(dir) = &config.event_log_dir
        && let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot empty the event log dir");
    }
    let mut scheduler_config = config.scheduler.clone();
    scheduler_config.memory_budget =
        usize::try_from(limits.max_runs_memory_bytes).unwrap_or(usize::MAX);
    scheduler_config.log = Arc::new(scheduler::LogConfig {
        memory: usize::try_from(limits.run_log_memory_bytes).unwrap_or(usize::MAX),
        dir: config.event_log_dir.clone(),
    });
    let room = config
        .data_dir
        .as_deref()
        .map(|dir| Arc::new(data_room::DataRoom::new(dir, limits.min_free_bytes)));
    let (history_tx, writer) = history::spawn_writer(store.clone(), room.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_scheduler = stop_rx.clone();
    let metrics = Arc::new(metrics::Metrics::default());
    let (scheduler, scheduler_task) = scheduler::spawn(
        scheduler_config,
        history_tx.clone(),
        metrics.clone(),
        async move {
            let _ = stop_scheduler.wait_for(|s| *s).await;
        },
    );
    let ready = Arc::new(AtomicBool::new(false));
    // Up before resuming, so probes can tell a coordinator that is starting from a dead one.
    let http_task = http.map(|listener| {
        let state = Arc::new(http::HttpState {
            scheduler: scheduler.clone(),
            store: store.clone(),
            history: history_tx.clone(),
            metrics,
            tokens: config.tokens.clone().map(Arc::new),
            ready: ready.clone(),
        });
        let mut stop = stop_rx.clone();
        tokio::spawn(http::serve(listener, state, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let run_slots = Arc::new(permits(limits.max_concurrent_runs));
    resume_unfinished(store.clone(), &scheduler, &history_tx, &run_slots).await;
    // After resuming (the runs it resumed name bundles that must be kept), before serving.
    if let Some(retention) = config.bundle_retention {
        bundles::collect_unused(&bundles, &store, retention).await;
        tokio::spawn(bundles::collect_periodically(
            bundles.clone(),
            store.clone(),
            retention,
            stop_rx.clone(),
        ));
    }
    let client = api::ClientApi {
        scheduler: scheduler.clone(),
        store,
        history: history_tx,
        blobs: bundles.blobs().map_err(|source| ServeError::BundleDir {
            path: config.bundle_dir.clone(),
            source,
        })?,
        bundles,
        limits: limits.clone(),
        run_slots,
        keyed_submits: tokio::sync::Mutex::default(),
        room,
        shared_names: Default::default(),
    };
    let gateway = api::Gateway {
        credits: history::credits::Credits::new(limits.max_pending_result_bytes),
        scheduler,
        next_conn: AtomicU64::new(1),
        sessions: Arc::new(permits(limits.max_agents)),
        limits: limits.clone(),
    };
    let mut server_stop = stop_rx;
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        // Every request passes the token check before any handler sees it.
        .layer(AuthLayer::new(
            config.tokens.clone(),
            api::access::required_role,
        ))
        .add_service(
            pb::coordinator_server::CoordinatorServer::new(client)
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            pb::agent_gateway_server::AgentGatewayServer::new(gateway)
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes),
        )
        .serve_with_incoming_shutdown(
            // `tcp_nodelay` above only applies to listeners tonic binds itself: without this,
            // Nagle's algorithm held small responses (a lease, a query's last frame) for a
            // delayed ACK, 40 ms each.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    if let Ok(c) = &conn {
                        let _ = c.set_nodelay(true);
                    }
                    conn
                },
            ),
            async move {
                let _ = server_stop.wait_for(|s| *s).await;
            },
        );
    let mut server = Box::pin(server);
    ready.store(true, Ordering::Release);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            ready.store(false, Ordering::Release);
            let _ = stop_tx.send(true);
            // The scheduler's end drops every session and watch stream, so connections drain; a
            // client that keeps its connection open is not waited for beyond a grace period.
            match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    drop(server);
    let _ = scheduler_task.await;
    let http_result = match http_task {
        Some(task) => task.await.unwrap_or(Ok(())),
        None => Ok(()),
    };
    // The writer thread ends once the last history sender (held by the dropped services) is gone.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    result?;
    http_result.map_err(ServeError::Http)
}

/// A semaphore for a counted limit (a limit beyond what tokio can count is as good as none).
fn permits(limit: usize) -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(limit.min(tokio::sync::Semaphore::MAX_PERMITS))
}

/// Picks up the runs an earlier coordinator process left unfinished, before any client or agent
/// can connect: their tests continue from what history recorded.
async fn resume_unfinished(
    store: Arc<dyn HistoryStore>,
    scheduler: &scheduler::SchedulerHandle,
    history: &tokio::sync::mpsc::UnboundedSender<history::HistoryUpdate>,
    run_slots: &Arc<tokio::sync::Semaphore>,
) {
    type Found = (
        history::RunRecord,
        Option<(testfleet_model::RunSpec, history::Plan)>,
        Vec<history::TestRecord>,
    );
    let s = store.clone();
    let found =
        tokio::task::spawn_blocking(move || -> Result<Vec<Found>, history::HistoryError> {
            let mut out = Vec::new();
            for rec in s.unfinished_runs()? {
                let id = testfleet_model::RunId(rec.run_id);
                let spec = match s.spec(id)? {
                    Some(spec) => {
                        let plan = history::plan(s.as_ref(), &spec)?;
                        Some((spec, plan))
                    }
                    None => None,
                };
                out.push((rec, spec, s.run_tests(id)?));
            }
            Ok(out)
        })
        .await;
    let found = match found {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read unfinished runs; they stay unfinished");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read unfinished runs; they stay unfinished");
            return;
        }
    };
    for (mut rec, spec, records) in found {
        let run_id = testfleet_model::RunId(rec.run_id);
        let Some((spec, plan)) = spec else {
            // Nothing to resume it from (its spec is gone): it ends, marked cancelled.
            tracing::warn!(run = %run_id, "an unfinished run without its spec cannot be resumed; marking it cancelled");
            rec.state = testfleet_model::RunState::Cancelled;
            let _ = history.send(history::HistoryUpdate::RunCreated(Box::new(rec)));
            continue;
        };
        rec.resumes += 1;
        let resumes = rec.resumes;
        let _ = history.send(history::HistoryUpdate::RunCreated(Box::new(rec)));
        let settled = records.iter().filter(|r| r.outcome.is_some()).count();
        let asked = scheduler
            .ask(|reply| scheduler::Command::Resume {
                run_id,
                spec: Arc::new(spec),
                estimates: plan.estimates,
                quarantined: plan.quarantined,
                records,
                resumes,
                // Resumed runs were accepted before: they count, but are never refused.
                slot: run_slots.clone().try_acquire_owned().ok(),
                reply,
            })
            .await;
        if asked.is_ok() {
            tracing::info!(run = %run_id, settled, "resumed an unfinished run");
        }
    }
}
