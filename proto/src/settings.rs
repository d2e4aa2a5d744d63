//! Per-test settings and test groups (model ↔ wire).

use std::time::Duration;

use testfleet_model::{LeakTimeout, RetryPolicy, TestGroup, TestSettings};

use crate::pb;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl From<&TestSettings> for pb::TestSettings {
    fn from(s: &TestSettings) -> Self {
        pb::TestSettings {
            threads_required: s.threads_required,
            test_group: s.test_group,
            retries: s.retries.map(|r| pb::RetryPolicy {
                count: r.count,
                delay_ms: ms(r.delay),
                exponential: r.exponential,
                jitter: r.jitter,
                max_delay_ms: r.max_delay.map(ms),
            }),
            flaky_fails: s.flaky_fails,
            timeout_ms: s.timeout.map(ms),
            kill_grace_ms: s.kill_grace.map(ms),
            slow_after_ms: s.slow_after.map(ms),
            leak_timeout: s.leak_timeout.map(|l| pb::LeakTimeout {
                period_ms: ms(l.period),
                fails: l.fails,
            }),
        }
    }
}

impl From<pb::TestSettings> for TestSettings {
    fn from(s: pb::TestSettings) -> Self {
        TestSettings {
            threads_required: s.threads_required,
            test_group: s.test_group,
            retries: s.retries.map(|r| RetryPolicy {
                count: r.count,
                delay: Duration::from_millis(r.delay_ms),
                exponential: r.exponential,
                jitter: r.jitter,
                max_delay: r.max_delay_ms.map(Duration::from_millis),
            }),
            flaky_fails: s.flaky_fails,
            timeout: s.timeout_ms.map(Duration::from_millis),
            kill_grace: s.kill_grace_ms.map(Duration::from_millis),
            slow_after: s.slow_after_ms.map(Duration::from_millis),
            leak_timeout: s.leak_timeout.map(|l| LeakTimeout {
                period: Duration::from_millis(l.period_ms),
                fails: l.fails,
            }),
        }
    }
}

impl From<&TestGroup> for pb::TestGroup {
    fn from(g: &TestGroup) -> Self {
        pb::TestGroup {
            name: g.name.clone(),
            max_threads: g.max_threads,
        }
    }
}

impl From<pb::TestGroup> for TestGroup {
    fn from(g: pb::TestGroup) -> Self {
        TestGroup {
            name: g.name,
            max_threads: g.max_threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_wire() {
        let s = TestSettings {
            threads_required: 0,
            test_group: Some(2),
            retries: Some(RetryPolicy {
                count: 3,
                delay: Duration::from_millis(250),
                exponential: true,
                jitter: true,
                max_delay: Some(Duration::from_secs(2)),
            }),
            flaky_fails: true,
            timeout: Some(Duration::from_secs(3)),
            kill_grace: Some(Duration::from_millis(500)),
            slow_after: Some(Duration::from_secs(1)),
            leak_timeout: Some(LeakTimeout {
                period: Duration::from_millis(100),
                fails: true,
            }),
        };
        assert_eq!(TestSettings::from(pb::TestSettings::from(&s)), s);
        let d = TestSettings::default();
        assert_eq!(TestSettings::from(pb::TestSettings::from(&d)), d);
    }
}
