//! One sandbox per run on an agent, shared by that run's leases and kept a little after the last
//! one ends (the next lease of a run usually follows at once), then dropped, which ends its helper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{OriginTree, RunId};
use tokio::sync::Mutex;

use super::{Launcher, Sandbox, Tree};

/// How often an open sandbox is checked for leases still holding it: it outlives its run's last
/// lease on this agent by at most this long.
const LINGER: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct RunSandboxes {
    launcher: Launcher,
    /// This agent's scratch space for sandboxes (`<work dir>/sandboxes/<agent>`).
    root: PathBuf,
    open: Arc<Mutex<HashMap<RunId, Arc<Sandbox>>>>,
}

impl RunSandboxes {
    /// Removes what an earlier run of this agent left in `root` (its namespaces died with it).
    pub fn new(launcher: Launcher, root: PathBuf) -> Self {
        if root.exists() {
            super::remove_scratch(&root);
        }
        RunSandboxes {
            launcher,
            root,
            open: Default::default(),
        }
    }

    /// The sandbox a lease's tests start in: `None` when the agent has none to give or the run
    /// names no origins (a local run, or a client that predates them).
    pub async fn for_lease(
        &self,
        run_id: RunId,
        bundle: &Path,
        origin: &[OriginTree],
    ) -> Result<Option<Arc<Sandbox>>, String> {
        if !self.launcher.available() || origin.is_empty() {
            return Ok(None);
        }
        let mut open = self.open.lock().await;
        if let Some(s) = open.get(&run_id) {
            return Ok(Some(s.clone()));
        }
        let trees: Vec<Tree> = origin
            .iter()
            .map(|o| Tree {
                bundle_path: bundle.join(&o.bundle_dir),
                origin: PathBuf::from(&o.path),
            })
            .collect();
        for t in &trees {
            // A bundle carries only files: a tree it has none of is still shown, empty.
            std::fs::create_dir_all(&t.bundle_path)
                .map_err(|e| format!("cannot prepare {}: {e}", t.bundle_path.display()))?;
        }
        let sandbox = self
            .launcher
            .open(&trees, &self.root.join(run_id.to_string()))
            .await
            .map_err(|e| format!("cannot make the run's sandbox: {e}"))?;
        open.insert(run_id, sandbox.clone());
        let (all, run) = (self.open.clone(), run_id);
        // Checked now and then rather than at every lease's end: cheap, and one place.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LINGER).await;
                let mut open = all.lock().await;
                match open.get(&run) {
                    Some(s) if Arc::strong_count(s) == 1 => {
                        open.remove(&run);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        });
        Ok(Some(sandbox))
    }
}
