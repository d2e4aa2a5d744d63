//! The dashboard: server-rendered pages over live scheduler state and history — runs (live and
//! past), one run's tests with their attempts and agents, the flaky ranking with its evidence,
//! the slowest tests, and a test's duration trend. Charts are SVG drawn here ([`svg`]).

mod html;
mod runs;
mod svg;
mod test_pages;

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
        .route("/flaky", get(test_pages::flaky))
        .route("/slowest", get(test_pages::slowest))
        .route("/test", get(test_pages::one))
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

/// Waits, as history queries do, until the history writer has written what was sent before the
/// page was asked for (a run that just finished is then whole on its page). If it has not within
/// the wait, the page says so at its top.
async fn history_note(state: &Shared) -> &'static str {
    note_after(&state.history, crate::history::QUERY_WAIT).await
}

async fn note_after(
    history: &tokio::sync::mpsc::UnboundedSender<crate::history::HistoryUpdate>,
    wait: std::time::Duration,
) -> &'static str {
    if crate::store_call::caught_up(history, wait).await {
        ""
    } else {
        BEHIND_NOTE
    }
}

const BEHIND_NOTE: &str = "<p class=\"note\">History is still being written: this page may not \
    show the latest results yet.</p>";

/// Reads history off the async threads (sled calls block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, PageError> {
    crate::store_call::blocking(f)
        .await
        .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod note_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_page_says_so_only_when_the_writer_has_not_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::SledStore::open(dir.path()).unwrap());
        let (writer, thread) = crate::history::spawn_writer(store, None);
        assert_eq!(note_after(&writer, Duration::from_secs(60)).await, "");
        drop(writer);
        thread.join().unwrap();

        // A queue nobody reads: the wait runs out.
        let (stuck, _never_read) = tokio::sync::mpsc::unbounded_channel();
        assert_eq!(
            note_after(&stuck, Duration::from_millis(1)).await,
            BEHIND_NOTE
        );
    }
}
