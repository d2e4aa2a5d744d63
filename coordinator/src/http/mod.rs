//! The coordinator's HTTP side, on a listener of its own: health probes, Prometheus metrics and
//! the dashboard. Plain HTTP/1.1, so browsers, Prometheus and Kubernetes probes need nothing
//! special; everything but the probes asks for a reader's token when the coordinator has tokens.

mod auth;
mod dashboard;
mod probes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::get;
use testfleet_security::TokenSet;
use tokio::net::TcpListener;

use crate::history::HistoryStore;
use crate::metrics::Metrics;
use crate::scheduler::SchedulerHandle;

/// What HTTP handlers read: the scheduler (live state), history, and the counters.
pub(crate) struct HttpState {
    pub scheduler: SchedulerHandle,
    pub store: Arc<dyn HistoryStore>,
    /// The history writer's queue: pages over history wait for it as queries do.
    pub history: tokio::sync::mpsc::UnboundedSender<crate::history::HistoryUpdate>,
    pub metrics: Arc<Metrics>,
    pub tokens: Option<Arc<TokenSet>>,
    /// Set once unfinished runs are resumed and the gRPC server is up; cleared when stopping.
    pub ready: Arc<AtomicBool>,
}

pub(crate) type Shared = Arc<HttpState>;

pub(crate) fn router(state: Shared) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(probes::metrics))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_reader,
        ));
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .merge(guarded)
        .with_state(state)
}

/// Serves HTTP on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
