//! A budget on the results between agents' sessions and the disk. A session takes credits for
//! each result's size before handing it to the scheduler; the credits travel with the result's
//! history update and come back once the history writer has committed it. When the writer falls
//! behind, sessions wait for credits, while the scheduler (dispatch, heartbeats, work requests)
//! never does; results are acknowledged only once taken, and agents with many unacknowledged
//! results stop asking for work, so the whole fleet slows down instead of the coordinator's
//! memory growing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget, counted in KiB.
#[derive(Clone, Debug)]
pub struct Credits {
    semaphore: Arc<Semaphore>,
    capacity_kib: u32,
}

/// Credits a result holds until it is written; given back when the last clone is dropped.
#[derive(Clone)]
pub struct Credit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl std::fmt::Debug for Credit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credit({} KiB)", self.0.num_permits())
    }
}

/// The default budget: results of some thirty thousand tests with small outputs (half a group of
/// the history writer's at most, so it has the next group waiting), or hundreds with large
/// outputs, between the sessions and the disk. Twice this measured the same throughput with a
/// peak 20-30 MiB higher, once a test's outcome was written with its attempt (a larger group
/// then saved no writes); half of it was a little slower (docs/benchmarks.md, ingest).
pub const DEFAULT_PENDING_RESULT_BYTES: u64 = 32 << 20;

impl Credits {
    pub fn new(budget_bytes: u64) -> Self {
        let capacity_kib = (budget_bytes >> 10).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Credits {
            semaphore: Arc::new(Semaphore::new(capacity_kib as usize)),
            capacity_kib,
        }
    }

    /// Waits for credits for a result of `bytes` (a result larger than the whole budget takes all
    /// of it, and waits for everything before it to be written).
    pub async fn take(&self, bytes: usize) -> Credit {
        let kib = (bytes >> 10) as u64 + 1;
        let n = kib.min(u64::from(self.capacity_kib)) as u32;
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the credits' semaphore is never closed");
        Credit(Arc::new(permit))
    }

    /// Credits taken and not given back yet, in bytes.
    pub fn in_use_bytes(&self) -> u64 {
        u64::from(self.capacity_kib - self.semaphore.available_permits() as u32) << 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_result_waits_until_earlier_ones_give_their_credits_back() {
        let credits = Credits::new(8 << 10);
        let a = credits.take(5 << 10).await;
        assert_eq!(credits.in_use_bytes(), 6 << 10);
        // 3 KiB more would exceed the budget: it waits.
        let waiting = tokio::spawn({
            let credits = credits.clone();
            async move { credits.take(2 << 10).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let copy = a.clone();
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a clone still holds the credits");
        drop(copy);
        let b = waiting.await.unwrap();
        assert_eq!(credits.in_use_bytes(), 3 << 10);
        drop(b);
        // A result larger than the whole budget takes all of it.
        let huge = credits.take(1 << 30).await;
        assert_eq!(credits.in_use_bytes(), 8 << 10);
        drop(huge);
        assert_eq!(credits.in_use_bytes(), 0);
    }
}
