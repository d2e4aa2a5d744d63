//! The values of nextest's per-test settings, read from TOML as nextest reads them: durations
//! (`"60s"`, `"1m 30s"`), `threads-required`, `retries`, `slow-timeout`, `leak-timeout`,
//! `flaky-result`, `test-group`. Each error names the key it is about.

use std::time::Duration;

use testfleet_model::{LeakTimeout, RetryPolicy};
use toml::Value;

/// A setting of one profile or override; `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// 0: all of the agent's slots (`num-cpus`, `num-test-threads`).
    pub threads_required: Option<u32>,
    /// `None` inside: `@global`.
    pub test_group: Option<Option<String>>,
    pub retries: Option<RetryPolicy>,
    pub flaky_fails: Option<bool>,
    pub slow_timeout: Option<SlowTimeout>,
    pub leak_timeout: Option<LeakTimeout>,
}

/// `slow-timeout`: when a test is slow, and when (if ever) it is terminated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowTimeout {
    pub period: Duration,
    pub terminate_after: Option<u32>,
    pub grace_period: Duration,
}

/// nextest's default time between the stop signal and SIGKILL at a slow-timeout's end.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Keys of a setting table that testfleet honours; the caller names the rest.
pub const SETTING_KEYS: &[&str] = &[
    "threads-required",
    "test-group",
    "retries",
    "flaky-result",
    "slow-timeout",
    "leak-timeout",
];

impl Settings {
    /// Reads the settings keys of `table` (a profile or an override); `at` names it in errors,
    /// and keys it does not honour are pushed to `unsupported` (as `at.key`).
    pub fn read(
        table: &toml::Table,
        at: &str,
        unsupported: &mut Vec<String>,
    ) -> Result<Settings, String> {
        let mut s = Settings::default();
        for (key, value) in table {
            let here = format!("{at}.{key}");
            match key.as_str() {
                "threads-required" => s.threads_required = Some(threads(value, &here)?),
                "test-group" => s.test_group = Some(test_group(value, &here)?),
                "retries" => s.retries = Some(retries(value, &here)?),
                "flaky-result" => s.flaky_fails = Some(flaky_result(value, &here)?),
                "slow-timeout" => s.slow_timeout = Some(slow_timeout(value, &here, unsupported)?),
                "leak-timeout" => s.leak_timeout = Some(leak_timeout(value, &here)?),
                _ => {}
            }
        }
        Ok(s)
    }
}

fn err<T>(at: &str, what: impl std::fmt::Display) -> Result<T, String> {
    Err(format!("`{at}`: {what}"))
}

/// A duration as nextest writes them (humantime: `"100ms"`, `"60s"`, `"1m 30s"`, `"30y"`).
pub fn duration(v: &Value, at: &str) -> Result<Duration, String> {
    match v.as_str() {
        Some(s) => humantime::parse_duration(s).or_else(|e| {
            err(
                at,
                format!("`{s}` is not a duration ({e}); write e.g. \"60s\""),
            )
        }),
        None => err(at, "expected a duration such as \"60s\""),
    }
}

fn positive(v: &Value, at: &str) -> Result<u32, String> {
    match v.as_integer() {
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        _ => err(at, "expected a positive integer"),
    }
}

fn threads(v: &Value, at: &str) -> Result<u32, String> {
    match v.as_str() {
        Some("num-cpus" | "num-test-threads") => Ok(0),
        Some(other) => err(
            at,
            format!("`{other}`: expected a positive integer, \"num-cpus\" or \"num-test-threads\""),
        ),
        None => positive(v, at),
    }
}

/// A test group's `max-threads`; `cpus` stands for `"num-cpus"`.
pub fn max_threads(v: &Value, at: &str, cpus: u32) -> Result<u32, String> {
    match v.as_str() {
        Some("num-cpus") => Ok(cpus.max(1)),
        Some(other) => err(
            at,
            format!("`{other}`: expected a positive integer or \"num-cpus\""),
        ),
        None => positive(v, at),
    }
}

fn test_group(v: &Value, at: &str) -> Result<Option<String>, String> {
    match v.as_str() {
        Some("@global") => Ok(None),
        Some(name) if !name.is_empty() => Ok(Some(name.to_owned())),
        _ => err(at, "expected a test group's name or \"@global\""),
    }
}

fn flaky_result(v: &Value, at: &str) -> Result<bool, String> {
    match v.as_str() {
        Some("pass") => Ok(false),
        Some("fail") => Ok(true),
        _ => err(at, "expected \"pass\" or \"fail\""),
    }
}

fn retries(v: &Value, at: &str) -> Result<RetryPolicy, String> {
    if let Some(n) = v.as_integer() {
        return match u32::try_from(n) {
            Ok(count) => Ok(RetryPolicy {
                count,
                ..Default::default()
            }),
            Err(_) => err(at, "expected a non-negative integer"),
        };
    }
    let Some(t) = v.as_table() else {
        return err(
            at,
            "expected a count, or a table such as { backoff = \"fixed\", count = 2, delay = \"1s\" }",
        );
    };
    let count = match t.get("count").and_then(Value::as_integer) {
        Some(n) if n >= 0 => n as u32,
        _ => return err(&format!("{at}.count"), "expected a non-negative integer"),
    };
    let exponential = match t.get("backoff").and_then(Value::as_str) {
        Some("fixed") => false,
        Some("exponential") => true,
        _ => {
            return err(
                &format!("{at}.backoff"),
                "expected \"fixed\" or \"exponential\"",
            );
        }
    };
    let delay = match t.get("delay") {
        Some(d) => duration(d, &format!("{at}.delay"))?,
        None => Duration::ZERO,
    };
    if exponential && delay.is_zero() {
        return err(
            &format!("{at}.delay"),
            "an exponential backoff needs a delay above zero",
        );
    }
    let jitter = match t.get("jitter") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => return err(&format!("{at}.jitter"), "expected true or false"),
    };
    let max_delay = match t.get("max-delay") {
        Some(d) => Some(duration(d, &format!("{at}.max-delay"))?),
        None => None,
    };
    if max_delay.is_some() && !exponential {
        return err(
            &format!("{at}.max-delay"),
            "only an exponential backoff has a max-delay",
        );
    }
    for key in t.keys() {
        if !["count", "backoff", "delay", "jitter", "max-delay"].contains(&key.as_str()) {
            return err(&format!("{at}.{key}"), "unknown key");
        }
    }
    Ok(RetryPolicy {
        count,
        delay,
        exponential,
        jitter,
        max_delay,
    })
}

fn slow_timeout(v: &Value, at: &str, unsupported: &mut Vec<String>) -> Result<SlowTimeout, String> {
    if v.is_str() {
        return Ok(SlowTimeout {
            period: duration(v, at)?,
            terminate_after: None,
            grace_period: DEFAULT_GRACE,
        });
    }
    let Some(t) = v.as_table() else {
        return err(
            at,
            "expected a duration, or a table such as { period = \"60s\", terminate-after = 2 }",
        );
    };
    let Some(period) = t.get("period") else {
        return err(&format!("{at}.period"), "missing");
    };
    let period = duration(period, &format!("{at}.period"))?;
    let terminate_after = match t.get("terminate-after") {
        Some(n) => Some(positive(n, &format!("{at}.terminate-after"))?),
        None => None,
    };
    let grace_period = match t.get("grace-period") {
        Some(d) => duration(d, &format!("{at}.grace-period"))?,
        None => DEFAULT_GRACE,
    };
    for (key, value) in t {
        match key.as_str() {
            "period" | "terminate-after" | "grace-period" => {}
            // Failing at the timeout is what testfleet does; passing is not supported.
            "on-timeout" if value.as_str() == Some("fail") => {}
            _ => unsupported.push(format!("{at}.{key}")),
        }
    }
    Ok(SlowTimeout {
        period,
        terminate_after,
        grace_period,
    })
}

fn leak_timeout(v: &Value, at: &str) -> Result<LeakTimeout, String> {
    if v.is_str() {
        return Ok(LeakTimeout {
            period: duration(v, at)?,
            fails: false,
        });
    }
    let Some(t) = v.as_table() else {
        return err(
            at,
            "expected a duration, or a table such as { period = \"500ms\", result = \"fail\" }",
        );
    };
    let period = match t.get("period") {
        Some(p) => duration(p, &format!("{at}.period"))?,
        None => return err(&format!("{at}.period"), "missing"),
    };
    let fails = match t.get("result").map(Value::as_str) {
        None | Some(Some("pass")) => false,
        Some(Some("fail")) => true,
        Some(_) => return err(&format!("{at}.result"), "expected \"pass\" or \"fail\""),
    };
    Ok(LeakTimeout { period, fails })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Result<Settings, String>, Vec<String>) {
        let table: toml::Table = text.parse().unwrap();
        let mut unsupported = vec![];
        (Settings::read(&table, "p", &mut unsupported), unsupported)
    }

    #[test]
    fn every_form_of_nextest_s_documented_values_reads() {
        let (s, unsupported) = read(
            r#"
            threads-required = "num-test-threads"
            test-group = "serial"
            retries = { backoff = "exponential", count = 4, delay = "2s", max-delay = "10s", jitter = true }
            flaky-result = "fail"
            slow-timeout = { period = "120s", terminate-after = 2, grace-period = "1s", on-timeout = "pass" }
            leak-timeout = { period = "500ms", result = "fail" }
            "#,
        );
        let s = s.unwrap();
        assert_eq!(s.threads_required, Some(0));
        assert_eq!(s.test_group, Some(Some("serial".into())));
        assert_eq!(
            s.retries,
            Some(RetryPolicy {
                count: 4,
                delay: Duration::from_secs(2),
                exponential: true,
                jitter: true,
                max_delay: Some(Duration::from_secs(10)),
            })
        );
        assert_eq!(s.flaky_fails, Some(true));
        assert_eq!(
            s.slow_timeout,
            Some(SlowTimeout {
                period: Duration::from_secs(120),
                terminate_after: Some(2),
                grace_period: Duration::from_secs(1),
            })
        );
        assert_eq!(
            s.leak_timeout,
            Some(LeakTimeout {
                period: Duration::from_millis(500),
                fails: true
            })
        );
        assert_eq!(unsupported, ["p.slow-timeout.on-timeout"]);

        let (s, _) = read(
            r#"
            threads-required = 2
            test-group = "@global"
            retries = 3
            slow-timeout = "1m 30s"
            leak-timeout = "100ms"
            "#,
        );
        let s = s.unwrap();
        assert_eq!(s.threads_required, Some(2));
        assert_eq!(s.test_group, Some(None));
        assert_eq!(s.retries.unwrap().count, 3);
        assert_eq!(s.slow_timeout.unwrap().period, Duration::from_secs(90));
        assert_eq!(s.slow_timeout.unwrap().grace_period, DEFAULT_GRACE);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("threads-required = 0", "`p.threads-required`"),
            (
                "retries = { count = 2, backoff = \"linear\" }",
                "`p.retries.backoff`",
            ),
            (
                "retries = { count = 2, backoff = \"exponential\" }",
                "`p.retries.delay`",
            ),
            (
                "slow-timeout = { terminate-after = 2 }",
                "`p.slow-timeout.period`",
            ),
            ("slow-timeout = \"soon\"", "`p.slow-timeout`"),
            ("flaky-result = \"maybe\"", "`p.flaky-result`"),
        ] {
            let e = read(text).0.unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }
}
