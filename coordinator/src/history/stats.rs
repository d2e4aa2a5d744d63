//! The statistics behind verdicts, pure and exact: nearest-rank percentiles, the Wilson interval
//! on a failure probability, a decayed flip rate, and slowdown detection. Formulas and sources:
//! `docs/design/history.md`.

/// Exact percentile by nearest rank over sorted values: the smallest value with at least `p`% of
/// the values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// p50, p95 and p99 of `values` (any order).
pub fn p50_p95_p99(values: &[u64]) -> Option<(u64, u64, u64)> {
    let mut v = values.to_vec();
    v.sort_unstable();
    Some((
        percentile(&v, 50.0)?,
        percentile(&v, 95.0)?,
        percentile(&v, 99.0)?,
    ))
}

/// A failure probability with its 95% Wilson score interval: honest with few runs (1 failure in
/// 20 runs gives about 1%–24%) and never outside [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probability {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

pub fn wilson(failures: u64, runs: u64) -> Option<Probability> {
    if runs == 0 {
        return None;
    }
    let (k, n) = (failures as f64, runs as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let z2n = z * z / n;
    let center = (p + z2n / 2.0) / (1.0 + z2n);
    let half = z * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt() / (1.0 + z2n);
    Some(Probability {
        estimate: p,
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    })
}

/// Weight of the newest observation in the decayed flip rate: a half-life of about 6.6 attempts.
pub const FLIP_DECAY: f64 = 0.1;

/// Updates an exponentially decayed flip rate with one more attempt: a flip is an outcome that
/// differs from the previous one. For independent failures with probability p it tends to 2p(1−p).
pub fn decayed_flip(previous_rate: f64, flipped: bool) -> f64 {
    FLIP_DECAY * f64::from(u8::from(flipped)) + (1.0 - FLIP_DECAY) * previous_rate
}

/// Median (nearest rank) of `values`.
pub fn median(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    percentile(&v, 50.0)
}

/// Median absolute deviation.
fn mad(values: &[u64], med: u64) -> u64 {
    let dev: Vec<u64> = values.iter().map(|v| v.abs_diff(med)).collect();
    median(&dev).unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowdownRule {
    /// The recent window.
    pub recent: usize,
    /// The baseline window before it, and how much of it must exist.
    pub baseline: usize,
    pub min_baseline: usize,
    /// `median(recent) / median(baseline)` at least this, in percent.
    pub min_ratio_pct: u64,
    /// And at least this much slower in absolute terms (the noise floor), in ms.
    pub min_jump_ms: u64,
    /// A baseline whose coefficient of variation exceeds this (in percent) is erratic: its
    /// medians say nothing, and no slowdown is reported.
    pub max_baseline_cv_pct: u64,
}

impl Default for SlowdownRule {
    fn default() -> Self {
        SlowdownRule {
            recent: 5,
            baseline: 30,
            min_baseline: 20,
            min_ratio_pct: 150,
            min_jump_ms: 100,
            max_baseline_cv_pct: 30,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slowdown {
    pub baseline_ms: u64,
    pub recent_ms: u64,
}

/// Compares the median of the last `recent` passing durations (oldest first in `history`) with the
/// median of the `baseline` before them. A slowdown needs both a ratio and an absolute jump above
/// `max(min_jump, 3·MAD(baseline))`, so noisy tests do not raise alarms.
pub fn slowdown(history: &[u64], rule: SlowdownRule) -> Option<Slowdown> {
    if history.len() < rule.recent + rule.min_baseline {
        return None;
    }
    let (before, recent) = history.split_at(history.len() - rule.recent);
    let baseline = &before[before.len().saturating_sub(rule.baseline)..];
    let b = median(baseline)?;
    let r = median(recent)?;
    let mean = baseline.iter().sum::<u64>() as f64 / baseline.len() as f64;
    let var = baseline
        .iter()
        .map(|x| (*x as f64 - mean).powi(2))
        .sum::<f64>()
        / baseline.len() as f64;
    if mean > 0.0 && var.sqrt() / mean * 100.0 > rule.max_baseline_cv_pct as f64 {
        return None;
    }
    let floor = rule.min_jump_ms.max(3 * mad(baseline, b));
    let slower = r.saturating_sub(b) >= floor && r * 100 >= b.max(1) * rule.min_ratio_pct;
    slower.then_some(Slowdown {
        baseline_ms: b,
        recent_ms: r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_have_known_answers() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(p50_p95_p99(&v), Some((50, 95, 99)));
        let v = [10, 20, 30, 40, 50];
        assert_eq!(p50_p95_p99(&v), Some((30, 50, 50)));
        assert_eq!(p50_p95_p99(&[7]), Some((7, 7, 7)));
        assert_eq!(p50_p95_p99(&[]), None);
        // Order does not matter.
        assert_eq!(p50_p95_p99(&[5, 1, 4, 2, 3]), Some((3, 5, 5)));
    }

    #[test]
    fn percentiles_are_always_one_of_the_values_and_monotonic() {
        let mut seed = 7u64;
        for n in 1..200 {
            let v: Vec<u64> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    seed >> 40
                })
                .collect();
            let (a, b, c) = p50_p95_p99(&v).unwrap();
            assert!(a <= b && b <= c);
            for x in [a, b, c] {
                assert!(v.contains(&x));
            }
            // At least p% of the values are at or below the p-th percentile.
            assert!(v.iter().filter(|x| **x <= b).count() * 100 >= 95 * v.len());
        }
    }

    #[test]
    fn wilson_intervals_match_published_values() {
        // flakerate's worked example: 1 failure in 20 runs gives about 1%–24%.
        let p = wilson(1, 20).unwrap();
        assert!((p.low - 0.0089).abs() < 0.001, "{p:?}");
        assert!((p.high - 0.2361).abs() < 0.001, "{p:?}");
        assert_eq!(p.estimate, 0.05);
        // No failures: the upper bound still says "we do not know much".
        let p = wilson(0, 10).unwrap();
        assert_eq!(p.low, 0.0);
        assert!(p.high > 0.25 && p.high < 0.35, "{p:?}");
        let p = wilson(10, 10).unwrap();
        assert!((p.high - 1.0).abs() < 1e-9, "{p:?}");
        assert!(wilson(0, 0).is_none());
        // More runs, narrower interval.
        let wide = wilson(5, 50).unwrap();
        let narrow = wilson(50, 500).unwrap();
        assert!(narrow.high - narrow.low < wide.high - wide.low);
    }

    #[test]
    fn the_decayed_flip_rate_tends_to_2p_1_minus_p() {
        // Alternating outcomes flip every time; a steady test never does.
        let mut r = 0.0;
        for _ in 0..200 {
            r = decayed_flip(r, true);
        }
        assert!((r - 1.0).abs() < 1e-6);
        let mut r = 0.5;
        for _ in 0..200 {
            r = decayed_flip(r, false);
        }
        assert!(r < 1e-6);
        // A deterministic pattern failing every 4th attempt flips 2 times in 4: rate → 0.5 ≈ 2·¼·¾ (0.375) order.
        let mut r = 0.0;
        let mut last = false;
        for i in 0..400 {
            let failed = i % 4 == 0;
            r = decayed_flip(r, failed != last);
            last = failed;
        }
        assert!(r > 0.4 && r < 0.6, "{r}");
    }

    #[test]
    fn slowdowns_need_both_a_ratio_and_a_jump_above_the_noise() {
        let rule = SlowdownRule::default();
        let steady: Vec<u64> = (0..30).map(|i| 1000 + (i % 5) * 10).collect();
        // Too little baseline: no verdict.
        assert_eq!(slowdown(&steady[..20], rule), None);
        let mut slower = steady.clone();
        slower.extend([1600, 1650, 1700, 1600, 1620]);
        assert_eq!(
            slowdown(&slower, rule),
            Some(Slowdown {
                baseline_ms: 1020,
                recent_ms: 1620
            })
        );
        // A ratio without an absolute jump (fast tests) is noise.
        let tiny: Vec<u64> = std::iter::repeat_n(10, 30)
            .chain([30, 30, 30, 30, 30])
            .collect();
        assert_eq!(slowdown(&tiny, rule), None);
        // An erratic (bimodal) baseline, which MAD alone would miss, raises no alarm.
        let noisy: Vec<u64> = (0..30)
            .map(|i| if i % 2 == 0 { 500 } else { 1500 })
            .chain([1700; 5])
            .collect();
        assert_eq!(slowdown(&noisy, rule), None);
        // Getting faster is never a slowdown.
        let faster: Vec<u64> = std::iter::repeat_n(1000, 30).chain([300; 5]).collect();
        assert_eq!(slowdown(&faster, rule), None);
    }
}
