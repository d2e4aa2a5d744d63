//! The engine while the agent runs, not only at its start. A probe every few seconds: when the
//! engine stops answering, what the pool started is forgotten (an engine that restarts kills its
//! containers) and tests that need services wait for it instead of failing at once; when it
//! answers again, what the old engine left is swept before any service starts anew. And a test
//! that failed while one of its services' containers was no longer running ran without its
//! service: an infrastructure error, retried, never counted against the test.

use std::sync::Arc;
use std::time::Duration;

use super::{Prepared, ServicePool};

/// How often a running agent asks its engine whether it is there.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long a test waits for an engine that went away before its services count as unavailable:
/// a restarting engine is back well within it.
pub(crate) const ENGINE_WAIT: Duration = Duration::from_secs(60);

/// The engine as the pool last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Up,
    /// Not answering, and why.
    Down(String),
}

impl ServicePool {
    /// Probes the engine every [`PROBE_EVERY`] until the pool is dropped or the task aborted.
    pub fn watch_engine(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.probe().await;
            }
        })
    }

    /// One probe: notes the engine going away, or coming back.
    pub(crate) async fn probe(&self) {
        let now = self.prov.status().await;
        let was_up = *self.engine.borrow() == Engine::Up;
        match (was_up, now) {
            (true, Err(why)) => {
                tracing::warn!(%why, "the Docker engine went away: its containers are taken as lost, and tests that need services wait for it");
                self.forget_all().await;
                self.engine.send_replace(Engine::Down(why));
            }
            (false, Ok(())) => {
                // What the old engine left (exited containers, their networks) goes before any
                // service starts again, so a sweep never takes a new one.
                if let Some(r) = self.sweep().await {
                    tracing::warn!(
                        containers = r.containers,
                        networks = r.networks,
                        "the Docker engine is back: removed what it left of this agent's"
                    );
                }
                self.engine.send_replace(Engine::Up);
            }
            _ => {}
        }
    }

    /// Returns at once while the engine is up; otherwise waits for it, for at most
    /// [`ENGINE_WAIT`].
    pub(super) async fn engine_ready(&self) -> Result<(), String> {
        let mut rx = self.engine.subscribe();
        let up = tokio::time::timeout(ENGINE_WAIT, rx.wait_for(|e| *e == Engine::Up)).await;
        if matches!(up, Ok(Ok(_))) {
            return Ok(());
        }
        let why = match &*self.engine.borrow() {
            Engine::Down(why) => why.clone(),
            Engine::Up => "it went away again".to_owned(),
        };
        Err(format!(
            "the Docker engine has not answered for {} s: {why}",
            ENGINE_WAIT.as_secs()
        ))
    }

    /// After a test failed: why, if one of its services' containers was no longer running when
    /// it ended (the engine restarted, or the container died). Such a container is forgotten, so
    /// the next test that needs the service starts a new one.
    pub async fn lost_service(&self, prepared: &Prepared) -> Option<String> {
        for (service, id) in &prepared.used {
            match self.prov.running(id).await {
                Ok(true) => {}
                Ok(false) => {
                    self.forget(id).await;
                    return Some(format!(
                        "service `{service}`'s container {} was no longer running when the test ended",
                        id.get(..12).unwrap_or(id)
                    ));
                }
                Err(e) => {
                    self.forget(id).await;
                    return Some(format!(
                        "the Docker engine did not answer about service `{service}`'s container: {e}"
                    ));
                }
            }
        }
        None
    }
}
