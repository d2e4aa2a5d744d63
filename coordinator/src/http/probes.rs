//! `/healthz` (the process serves and its scheduler answers), `/readyz` (it also has resumed its
//! unfinished runs and is not stopping: send it work) and `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use crate::metrics::Gauges;
use crate::scheduler::Command;

/// A scheduler that cannot answer within this long is not healthy (it answers in microseconds).
const SCHEDULER_ANSWER: Duration = Duration::from_secs(5);

async fn gauges(state: &Shared) -> Result<Gauges, Response> {
    let asked = state.scheduler.ask(|reply| Command::Stats { reply });
    match tokio::time::timeout(SCHEDULER_ANSWER, asked).await {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(_)) => Err(unavailable("the scheduler has stopped")),
        Err(_) => Err(unavailable("the scheduler did not answer within 5 s")),
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

pub(super) async fn healthz(State(state): State<Shared>) -> Response {
    match gauges(&state).await {
        Ok(_) => "ok\n".into_response(),
        Err(r) => r,
    }
}

pub(super) async fn readyz(State(state): State<Shared>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return unavailable("not ready: starting (resuming unfinished runs) or stopping");
    }
    match gauges(&state).await {
        Ok(_) => "ready\n".into_response(),
        Err(r) => r,
    }
}

pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    match gauges(&state).await {
        Ok(g) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render(&g),
        )
            .into_response(),
        Err(r) => r,
    }
}
