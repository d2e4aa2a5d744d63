//! A pytest suite whose files are collected by more than one collector each (a package of tests
//! under `--doctest-modules`, as requests' own suite is): one pytest worker that runs tests of
//! several files finds every test of each, its doctests too, and ends each as pytest does.

use std::path::Path;

use crate::pytest_outcomes::{pytest_junit, verdicts};
use crate::support::*;

const FIRST: &str = r#"
def double(n):
    """
    >>> double(2)
    4
    """
    return 2 * n

def test_double():
    assert double(3) == 6

def test_double_wrong():
    assert double(3) == 7
"#;

const SECOND: &str = r#"
def half(n):
    """
    >>> half(4)
    3
    """
    return n // 2

def test_half():
    assert half(8) == 4

class TestMore:
    def test_zero(self):
        assert half(0) == 0
"#;

fn write_suite(dir: &Path) {
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("testfleet.toml"),
        "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pytest.ini"),
        "[pytest]\naddopts = --doctest-modules\n",
    )
    .unwrap();
    std::fs::write(dir.join("tests/__init__.py"), "").unwrap();
    std::fs::write(dir.join("tests/test_first.py"), FIRST).unwrap();
    std::fs::write(dir.join("tests/test_second.py"), SECOND).unwrap();
}

#[test]
fn one_worker_finds_every_test_of_files_collected_twice() {
    let name = "one_worker_finds_every_test_of_files_collected_twice";
    if !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    write_suite(&suite);
    let pytest = pytest_junit(&suite, &dir.path().join("pytest.xml"), "tests");
    // Both doctests are cases of their own: one passes, one fails.
    assert_eq!(pytest.len(), 6, "{pytest:?}");
    let ours = dir.path().join("ours.xml");
    // One agent, one slot: a single worker runs the tests of both files.
    let out = RunLine::local(1)
        .args(&["--slots", "1"])
        .in_dir(&suite)
        .json()
        .retries(0)
        .junit(&ours)
        .output();
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        infra_messages(&events(&out)).is_empty(),
        "{:?}",
        infra_messages(&events(&out))
    );
    assert_eq!(verdicts(&std::fs::read_to_string(&ours).unwrap()), pytest);
}
