use std::time::Duration;

use super::*;
use crate::filterset::{Packages, TestItem};

fn host() -> Result<String, String> {
    Ok("x86_64-unknown-linux-gnu".into())
}

fn config(text: &str, profile: &str) -> Result<NextestConfig, String> {
    let table: toml::Table = text.parse().unwrap();
    NextestConfig::from_table(PathBuf::from(CONFIG_PATH), &table, profile, 8, host)
}

fn item(name: &str) -> TestItem<'_> {
    TestItem {
        name,
        package: "app",
        binary: "it",
        binary_id: "app::it",
        kind: "test",
    }
}

fn settings(c: &NextestConfig, name: &str) -> Settings {
    c.settings_for(|f| f.matches(&item(name), &Packages::default()))
}

const SUITE: &str = r#"
nextest-version = "0.9.50"

[test-groups]
serial = { max-threads = 1 }
pair = { max-threads = "num-cpus" }

[profile.default]
retries = 1
slow-timeout = { period = "1s", terminate-after = 3 }
fail-fast = false
status-level = "all"

[[profile.default.overrides]]
filter = "test(/^serial_/)"
test-group = "serial"

[[profile.default.overrides]]
filter = "test(heavy)"
threads-required = 2
retries = 0

[[profile.default.overrides]]
platform = 'cfg(windows)'
retries = 9

[[profile.default.overrides]]
platform = { host = "cfg(unix)", target = "x86_64-unknown-linux-gnu" }
leak-timeout = "50ms"

[profile.ci]
retries = { backoff = "fixed", count = 3, delay = "10ms" }
leak-timeout = "1s"
junit.path = "junit.xml"

[[profile.ci.overrides]]
filter = "test(heavy)"
retries = 2
priority = 5

[profile.nightly]
inherits = "ci"
flaky-result = "fail"
"#;

#[test]
fn the_first_matching_override_wins_per_key_then_the_profile_then_default() {
    let c = config(SUITE, "default").unwrap();
    assert_eq!(c.groups["serial"], 1);
    assert_eq!(c.groups["pair"], 8, "num-cpus");
    let serial = settings(&c, "serial_one");
    assert_eq!(serial.test_group, Some(Some("serial".into())));
    assert_eq!(serial.retries.unwrap().count, 1);
    // The cfg(windows) override does not apply on Linux; the unix one does, for every test.
    assert_eq!(
        serial.leak_timeout.unwrap().period,
        Duration::from_millis(50)
    );
    let heavy = settings(&c, "heavy_sum");
    assert_eq!(heavy.threads_required, Some(2));
    assert_eq!(heavy.retries.unwrap().count, 0);
    assert_eq!(heavy.test_group, None);
    let slow = heavy.slow_timeout.unwrap();
    assert_eq!(
        (slow.period, slow.terminate_after),
        (Duration::from_secs(1), Some(3))
    );
}

#[test]
fn a_profile_s_overrides_come_before_default_s_and_inherits_chains_profiles() {
    let ci = config(SUITE, "ci").unwrap();
    // ci's own override beats default's override for the same test...
    assert_eq!(settings(&ci, "heavy_sum").retries.unwrap().count, 2);
    // ...and default's overrides beat ci's profile-level settings.
    assert_eq!(settings(&ci, "heavy_sum").threads_required, Some(2));
    assert_eq!(
        settings(&ci, "serial_one").leak_timeout.unwrap().period,
        Duration::from_millis(50)
    );
    assert_eq!(settings(&ci, "serial_one").retries.unwrap().count, 3);
    let plain = settings(&ci, "plain");
    assert_eq!(plain.retries.unwrap().count, 3);
    assert_eq!(plain.retries.unwrap().delay, Duration::from_millis(10));
    assert_eq!(plain.flaky_fails, None);
    let nightly = config(SUITE, "nightly").unwrap();
    assert_eq!(settings(&nightly, "plain").flaky_fails, Some(true));
    assert_eq!(settings(&nightly, "plain").retries.unwrap().count, 3);
}

#[test]
fn keys_testfleet_does_not_honour_are_named_once() {
    let c = config(SUITE, "nightly").unwrap();
    assert_eq!(
        c.unsupported,
        [
            "profile.ci.junit",
            "profile.ci.overrides[0].priority",
            "profile.default.fail-fast",
            "profile.default.status-level",
        ]
    );
    let w = c.warning().unwrap();
    assert!(
        w.starts_with("warning: .config/nextest.toml sets keys that testfleet does not support"),
        "{w}"
    );
    assert!(
        config("[profile.default]\nretries = 2\n", "default")
            .unwrap()
            .warning()
            .is_none()
    );
}

#[test]
fn unknown_profiles_groups_and_loops_are_errors() {
    let e = config(SUITE, "release").unwrap_err();
    assert!(
        e.contains("profile `release` is not defined (profiles: ci, default, nightly)"),
        "{e}"
    );
    let e = config(
        "[[profile.default.overrides]]\nfilter = 'all()'\ntest-group = 'db'\n",
        "default",
    )
    .unwrap_err();
    assert!(
        e.contains("test group `db` is used but not declared"),
        "{e}"
    );
    let e = config(
        "[profile.a]\ninherits = 'b'\n[profile.b]\ninherits = 'a'\n",
        "a",
    )
    .unwrap_err();
    assert!(e.contains("in a loop: a -> b -> a"), "{e}");
    let e = config(
        "[[profile.default.overrides]]\nfilter = 'test(('\nretries = 1\n",
        "default",
    )
    .unwrap_err();
    assert!(e.contains("profile.default.overrides[0].filter"), "{e}");
    assert!(e.contains('^'), "points at the character: {e}");
}

#[test]
fn the_default_filter_selects_tests() {
    let c = config(
        "[profile.default]\ndefault-filter = 'not test(slow)'\n",
        "default",
    )
    .unwrap();
    assert!(c.selects(&item("fast"), &Packages::default()));
    assert!(!c.selects(&item("slow_one"), &Packages::default()));
}

#[test]
fn a_missing_file_is_no_config_unless_a_profile_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    assert!(NextestConfig::load(dir.path(), None, 2).unwrap().is_none());
    assert!(
        NextestConfig::load(dir.path(), Some("default"), 2)
            .unwrap()
            .is_none()
    );
    let e = NextestConfig::load(dir.path(), Some("ci"), 2).unwrap_err();
    assert!(
        e.to_string().contains("nextest profile `ci` was asked for"),
        "{e}"
    );
}
