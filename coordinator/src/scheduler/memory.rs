//! The runs' memory budget ([`super::SchedulerConfig::memory_budget`]): before a run is admitted,
//! finished runs leave memory, oldest first, until the new one fits; if the runs still running
//! leave no room, the new run is refused (its submitter is told to come back when one finishes).

use std::fmt;

use testfleet_model::RunSpec;

use super::Scheduler;
use super::run::Run;

/// Why a run could not be given room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRefused {
    /// What the new run would hold.
    pub needed: usize,
    /// What the runs still in memory hold.
    pub held: usize,
    pub running: usize,
    pub budget: usize,
}

impl fmt::Display for RoomRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
        if self.needed > self.budget {
            write!(
                f,
                "the run would hold about {:.1} MiB in memory, more than the {:.1} MiB runs may hold in all",
                mib(self.needed),
                mib(self.budget)
            )
        } else {
            write!(
                f,
                "the run would hold about {:.1} MiB in memory, and the {} running run(s) hold {:.1} MiB of the {:.1} MiB runs may hold in all; submit again when one has finished",
                mib(self.needed),
                self.running,
                mib(self.held),
                mib(self.budget)
            )
        }
    }
}

/// What a run of `spec` will hold in memory once admitted, before its log grows.
pub fn memory_of(spec: &RunSpec) -> usize {
    Run::footprint_of(spec)
}

impl Scheduler {
    /// Makes room for a run that will hold `needed` bytes, dropping finished runs from memory
    /// (oldest first) while that is not enough.
    pub(super) fn make_room(&mut self, needed: usize) -> Result<(), RoomRefused> {
        let budget = self.config.memory_budget;
        let mut held: usize = self.runs.values().map(Run::memory_bytes).sum();
        while held.saturating_add(needed) > budget {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            if let Some(run) = self.runs.remove(&old) {
                held = held.saturating_sub(run.memory_bytes());
            }
        }
        if held.saturating_add(needed) > budget {
            return Err(RoomRefused {
                needed,
                held,
                running: self.runs.values().filter(|r| r.is_running()).count(),
                budget,
            });
        }
        Ok(())
    }
}
