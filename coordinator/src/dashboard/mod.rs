//! The dashboard: server-rendered pages over live scheduler state and history — runs (live and
//! past), one run's tests with their attempts and agents, the flaky ranking with its evidence,
//! the slowest tests, and a test's duration trend. Charts are SVG drawn here ([`svg`]).

mod html;
mod runs;
mod svg;
mod tests;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::history::HistoryError;
use crate::http::Shared;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(runs::list))
        .route("/runs/{id}", get(runs::one))
        .route("/flaky", get(tests::flaky))
        .route("/slowest", get(tests::slowest))
        .route("/test", get(tests::one))
}

/// A page's failure: a status and a sentence.
pub(crate) struct PageError(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html::page("Error", "", None, &format!("<p>{}</p>", html::esc(&self.1)));
        (self.0, body).into_response()
    }
}

impl PageError {
    fn not_found(what: String) -> Self {
        PageError(StatusCode::NOT_FOUND, what)
    }
}

impl From<crate::scheduler::SchedulerGone> for PageError {
    fn from(e: crate::scheduler::SchedulerGone) -> Self {
        PageError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Reads history off the async threads (sled calls block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
