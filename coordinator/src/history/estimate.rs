//! Duration estimates for scheduling: a test's p95 from history; without history, the mean of the
//! known tests of the same binary, then of the suite, then one second.

use std::collections::HashMap;
use std::time::Duration;

pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(1);

/// One estimate per test, and whether it came from the test's own history. `own[i]` is test i's
/// p95, when it has one.
pub fn estimate_all(binary_ids: &[&str], own: &[Option<Duration>]) -> Vec<(Duration, bool)> {
    let mut per_binary: HashMap<&str, (Duration, u32)> = HashMap::new();
    let mut suite = (Duration::ZERO, 0u32);
    for (b, e) in binary_ids.iter().zip(own) {
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
            Some(e) => (*e, true),
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
    fn unknown_tests_borrow_from_their_binary_then_the_suite() {
        let ms = |m| Some(Duration::from_millis(m));
        let est = estimate_all(
            &["a", "a", "a", "b", "c"],
            &[ms(100), ms(300), None, ms(500), None],
        );
        assert_eq!(est[0], (Duration::from_millis(100), true));
        assert_eq!(est[2], (Duration::from_millis(200), false)); // binary a's mean
        assert_eq!(est[3], (Duration::from_millis(500), true));
        assert_eq!(est[4], (Duration::from_millis(300), false)); // suite mean
        assert_eq!(
            estimate_all(&["x"], &[None]),
            vec![(DEFAULT_ESTIMATE, false)]
        );
    }
}
