//! Duration estimates for scheduling: p95 of a test's recent passing durations; without history, the
//! mean of known tests in the same binary, then of the suite, then one second.

use std::collections::HashMap;
use std::time::Duration;

pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(1);

/// Exact percentile by nearest rank: the smallest value with at least `p`% of values at or below it.
pub fn percentile_nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// One estimate per test, and whether it came from the test's own history.
pub fn estimate_all(binary_ids: &[&str], history: &[Vec<Duration>]) -> Vec<(Duration, bool)> {
    let own: Vec<Option<Duration>> = history
        .iter()
        .map(|d| {
            let mut ms: Vec<u64> = d.iter().map(|d| d.as_millis() as u64).collect();
            ms.sort_unstable();
            percentile_nearest_rank(&ms, 95.0).map(Duration::from_millis)
        })
        .collect();
    let mut per_binary: HashMap<&str, (Duration, u32)> = HashMap::new();
    let mut suite = (Duration::ZERO, 0u32);
    for (b, e) in binary_ids.iter().zip(&own) {
        if let Some(e) = e {
            let slot = per_binary.entry(b).or_default();
            slot.0 += *e;
            slot.1 += 1;
            suite.0 += *e;
            suite.1 += 1;
        }
    }
    let mean = |(sum, n): (Duration, u32)| (n > 0).then(|| sum / n);
    binary_ids
        .iter()
        .zip(own)
        .map(|(b, e)| match e {
            Some(e) => (e, true),
            None => (
                per_binary
                    .get(b)
                    .copied()
                    .and_then(mean)
                    .or_else(|| mean(suite))
                    .unwrap_or(DEFAULT_ESTIMATE),
                false,
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_nearest_rank(&v, 95.0), Some(95));
        assert_eq!(percentile_nearest_rank(&v, 50.0), Some(50));
        assert_eq!(percentile_nearest_rank(&v, 99.0), Some(99));
        assert_eq!(percentile_nearest_rank(&[7], 95.0), Some(7));
        assert_eq!(percentile_nearest_rank(&[1, 2, 3, 4], 95.0), Some(4));
        assert_eq!(percentile_nearest_rank(&[], 95.0), None);
    }

    #[test]
    fn unknown_tests_borrow_from_their_binary_then_the_suite() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let est = estimate_all(
            &["a", "a", "b", "c"],
            &[ms(&[100, 300]), vec![], ms(&[500]), vec![]],
        );
        assert_eq!(est[0], (Duration::from_millis(300), true));
        assert_eq!(est[1], (Duration::from_millis(300), false)); // binary a's mean
        assert_eq!(est[2], (Duration::from_millis(500), true));
        assert_eq!(est[3], (Duration::from_millis(400), false)); // suite mean
        assert_eq!(
            estimate_all(&["x"], &[vec![]]),
            vec![(DEFAULT_ESTIMATE, false)]
        );
    }
}
