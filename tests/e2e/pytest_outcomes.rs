//! A pytest suite with every outcome pytest knows, run by testfleet on local agents (on pytest
//! workers, and a process per test) and on agents that cannot see it: each case comes out named
//! and settled as pytest's own `--junitxml` names and settles it, the skips are skips in the
//! summary and in history, and the query commands work in the suite's directory, which a remote
//! run leaves as it found it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use testfleet_model::junit::read;
use testfleet_model::report::TestHistory;
use testfleet_model::{AttemptStatus, exit_code};

use crate::support::*;

/// Every outcome pytest reports for a test that ends.
const OUTCOMES: &str = r#"
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("the fixture broke")

def test_passes():
    pass

def test_fails():
    assert 1 + 1 == 3

@pytest.mark.skip(reason="by marker")
def test_skip_marker():
    pass

@pytest.mark.skipif(True, reason="by condition")
def test_skipif():
    pass

def test_skip_at_run_time():
    pytest.skip("decided at run time")

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed since")
def test_xpass():
    pass

@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass

def test_fixture_error(broken):
    pass

class TestGroup:
    @pytest.mark.parametrize("n", [1, 2])
    def test_param(self, n):
        assert n == 1
"#;

/// Tests after which pytest writes no report at all: a crash and a hang, beside a passing test.
const MISBEHAVING: &str = r#"
import os
import time

def test_crash():
    os._exit(3)

def test_hang():
    time.sleep(600)

def test_beside_them():
    pass
"#;

/// A pytest suite (`testfleet.toml` naming the runner) of both files in `dir/suite`.
pub(crate) fn write_suite(dir: &Path) -> PathBuf {
    let suite = dir.join("suite");
    std::fs::create_dir_all(suite.join("tests")).unwrap();
    std::fs::write(
        suite.join("testfleet.toml"),
        "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n",
    )
    .unwrap();
    std::fs::write(suite.join("tests/test_outcomes.py"), OUTCOMES).unwrap();
    std::fs::write(suite.join("tests/test_misbehaving.py"), MISBEHAVING).unwrap();
    suite
}

pub(crate) type Verdicts = BTreeMap<(String, String), &'static str>;

/// Each case of a JUnit file by (classname, name): passed, failed (a failure or an error) or
/// skipped.
pub(crate) fn verdicts(xml: &str) -> Verdicts {
    read::parse(xml, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| {
            let verdict = match (&c.skipped, c.attempts.last().map(|a| a.status)) {
                (Some(_), _) => "skipped",
                (None, Some(AttemptStatus::Passed)) => "passed",
                _ => "failed",
            };
            ((c.classname, c.name), verdict)
        })
        .collect()
}

fn of_file(v: &Verdicts, classname_prefix: &str) -> Verdicts {
    v.iter()
        .filter(|((c, _), _)| c.starts_with(classname_prefix))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// What pytest itself reports of the file that lets it finish.
fn pytest_own(suite: &Path, report: &Path) -> Verdicts {
    pytest_junit(suite, report, "tests/test_outcomes.py")
}

/// What pytest reports (in `report`) of `target` in `suite`, where some tests fail.
pub(crate) fn pytest_junit(suite: &Path, report: &Path, target: &str) -> Verdicts {
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            ".",
        ])
        .arg(format!("--junitxml={}", report.display()))
        .arg(target)
        .current_dir(suite)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    verdicts(&std::fs::read_to_string(report).unwrap())
}

/// testfleet's JUnit report of a run that ended with failed tests: the outcomes file as pytest
/// reported it, the crash failed, the hang failed, the test beside them passed.
fn check_report(label: &str, out: &std::process::Output, report: &Path, pytest: &Verdicts) {
    assert_eq!(
        out.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{label}: {}",
        stderr(out)
    );
    let ours = verdicts(&std::fs::read_to_string(report).unwrap());
    assert_eq!(
        of_file(&ours, "tests.test_outcomes"),
        *pytest,
        "{label}: every case under pytest's name, with pytest's verdict"
    );
    let key = |name: &str| ("tests.test_misbehaving".to_owned(), name.to_owned());
    assert_eq!(
        of_file(&ours, "tests.test_misbehaving"),
        BTreeMap::from([
            (key("test_crash"), "failed"),
            (key("test_hang"), "failed"),
            (key("test_beside_them"), "passed"),
        ]),
        "{label}"
    );
    let s = summary(&events(out));
    let skipped = pytest.values().filter(|v| **v == "skipped").count() as u32;
    assert_eq!(s.skipped, skipped, "{label}: {s:?}");
    let passed = pytest.values().filter(|v| **v == "passed").count() as u32;
    assert_eq!(s.passed, passed + 1, "{label}: {s:?}");
}

/// The crashing test's attempt was blamed for the crash, in these words.
fn assert_crash_says(out: &std::process::Output, words: &str) {
    let crash = attempts(&events(out), "tests/test_misbehaving.py::test_crash");
    assert!(crash[0].2.message.contains(words), "{crash:?}");
}

/// Every path under `dir`, to show a run left nothing behind.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    all
}

#[test]
fn every_pytest_outcome_is_reported_as_pytest_reports_it_locally_and_remotely() {
    let name = "every_pytest_outcome_is_reported_as_pytest_reports_it_locally_and_remotely";
    if !pytest_or_skip(name) || !namespaces_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path());
    let pytest = pytest_own(&suite, &dir.path().join("pytest.xml"));
    let key = |name: &str| ("tests.test_outcomes".to_owned(), name.to_owned());
    // What this test relies on pytest saying, so a change in pytest shows here first.
    for (name, verdict) in [
        ("test_skip_at_run_time", "skipped"),
        ("test_xfail", "skipped"),
        ("test_xpass", "passed"),
        ("test_xpass_strict", "failed"),
        ("test_fixture_error", "failed"),
    ] {
        assert_eq!(pytest.get(&key(name)), Some(&verdict), "{pytest:?}");
    }
    let group = (
        "tests.test_outcomes.TestGroup".to_owned(),
        "test_param[2]".to_owned(),
    );
    assert_eq!(pytest.get(&group), Some(&"failed"), "{pytest:?}");

    let local = dir.path().join("local.xml");
    let out = RunLine::local(2)
        .in_dir(&suite)
        .json()
        .retries(0)
        .timeout(5, 1)
        .junit(&local)
        .output();
    check_report("local", &out, &local, &pytest);
    let skip = attempts(
        &events(&out),
        "tests/test_outcomes.py::test_skip_at_run_time",
    );
    assert_eq!(skip.len(), 1);
    assert_eq!(
        (skip[0].2.status, skip[0].2.message.as_str()),
        (AttemptStatus::Skipped, "decided at run time")
    );
    let xfail = attempts(&events(&out), "tests/test_outcomes.py::test_xfail");
    assert_eq!(xfail[0].2.message, "xfail: known bug");
    // In batches (the default) the tests ran on long-lived pytest workers: the crash took its
    // worker down, and only its own test was blamed.
    assert_crash_says(&out, "pytest worker exited with code 3");

    // A process per test, for suites that need it: the same outcomes, no worker.
    let alone = dir.path().join("alone.xml");
    let out = RunLine::local(2)
        .in_dir(&suite)
        .json()
        .retries(0)
        .timeout(5, 1)
        .args(&["--tests-per-process", "1"])
        .junit(&alone)
        .output();
    check_report("a process per test", &out, &alone, &pytest);
    assert_crash_says(&out, "`python3` exited with code 3");

    // History, asked in the suite's directory: a skip is the last outcome, and no duration.
    let history = run_output(
        testfleet()
            .args(["history", "test_skip_at_run_time", "--json"])
            .current_dir(&suite),
    );
    assert!(history.status.success(), "{}", stderr(&history));
    let found: Vec<TestHistory> = serde_json::from_slice(&history.stdout).unwrap();
    let [h] = found.as_slice() else {
        panic!("one test matches: {found:?}");
    };
    assert_eq!(
        h.last_outcome,
        Some(testfleet_model::Outcome::Skipped),
        "{h:?}"
    );
    assert_eq!((h.p50_ms, h.failures), (None, 0), "{h:?}");
    for query in [
        ["runs", "--json"],
        ["timings", "--json"],
        ["flaky", "--json"],
    ] {
        let q = run_output(testfleet().args(query).current_dir(&suite));
        assert!(q.status.success(), "{query:?}: {}", stderr(&q));
    }

    // The same on two agents that cannot see the suite.
    let (_coordinator, url) = coordinator(dir.path());
    let _agents: Vec<Proc> = ["py-hidden-a", "py-hidden-b"]
        .iter()
        .map(|id| {
            let id = unique(id);
            Proc::spawn(
                hidden_agent_command(dir.path(), &url, &id, &suite),
                dir.path().join(format!("{id}.log")),
            )
        })
        .collect();
    wait_for_agents(&url, 2);
    let before = listing(&suite);
    let remote = dir.path().join("remote.xml");
    let out = RunLine::on(&url)
        .in_dir(&suite)
        .json()
        .retries(0)
        .timeout(5, 1)
        .junit(&remote)
        .output();
    check_report("remote", &out, &remote, &pytest);
    // There too, on pytest workers in the agents' sandboxes.
    assert_crash_says(&out, "pytest worker exited with code 3");
    assert_eq!(
        listing(&suite),
        before,
        "a remote run leaves the suite's directory as it was"
    );
}

/// Tests that note the process they ran in, by node id, in `$PIDS`.
const NOTED: &str = r#"
import os
import pytest

def note(request):
    with open(os.environ["PIDS"], "a") as f:
        f.write("%s %d\n" % (request.node.nodeid, os.getpid()))
"#;

fn noting_file(group: Option<&str>, n: usize) -> String {
    let mut src = NOTED.to_owned();
    for i in 0..n {
        if let Some(g) = group {
            src.push_str(&format!("\n@pytest.mark.xdist_group(name=\"{g}\")"));
        }
        src.push_str(&format!("\ndef test_{i}(request):\n    note(request)\n"));
    }
    src
}

/// The process each test ran in, by node id.
fn pids(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, pid) = l.rsplit_once(' ').unwrap();
            (id.to_owned(), pid.to_owned())
        })
        .collect()
}

/// `@pytest.mark.xdist_group` is honoured (a group's tests run one after another on one worker,
/// across files), and `dist = "loadfile"` keeps each file's tests on one worker.
#[test]
fn xdist_groups_and_loadfile_keep_tests_on_one_worker() {
    let name = "xdist_groups_and_loadfile_keep_tests_on_one_worker";
    if !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(suite.join("tests")).unwrap();
    std::fs::write(suite.join("tests/test_a_db.py"), noting_file(Some("db"), 3)).unwrap();
    std::fs::write(suite.join("tests/test_z_db.py"), noting_file(Some("db"), 3)).unwrap();
    for f in 0..4 {
        std::fs::write(
            suite.join(format!("tests/test_free_{f}.py")),
            noting_file(None, 6),
        )
        .unwrap();
    }
    let run = |dist: &str, log: &Path| {
        std::fs::write(
            suite.join("testfleet.toml"),
            format!("[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n{dist}"),
        )
        .unwrap();
        let out = RunLine::local(2)
            .in_dir(&suite)
            .json()
            .env("PIDS", log)
            .output();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(summary(&events(&out)).passed, 6 + 24);
        pids(log)
    };

    let marked = run("", &dir.path().join("marked.log"));
    let db: std::collections::BTreeSet<&String> = marked
        .iter()
        .filter(|(id, _)| id.contains("_db.py"))
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(db.len(), 1, "the group ran in one process: {marked:?}");
    let all: std::collections::BTreeSet<&String> = marked.values().collect();
    assert!(all.len() >= 2, "both agents worked: {marked:?}");

    let by_file = run("dist = \"loadfile\"\n", &dir.path().join("loadfile.log"));
    for f in 0..4 {
        let file = format!("tests/test_free_{f}.py::");
        let in_file: std::collections::BTreeSet<&String> = by_file
            .iter()
            .filter(|(id, _)| id.starts_with(&file))
            .map(|(_, pid)| pid)
            .collect();
        assert_eq!(in_file.len(), 1, "{file} ran in one process: {by_file:?}");
    }
}

/// A fixture of `tests/conftest.py` (not the root's) is seen by every file one worker runs: since
/// pytest 9.1 it belongs to the directory's node, which a worker must keep between files.
#[test]
fn a_subdirectory_conftest_s_fixtures_reach_every_file_of_a_worker() {
    let name = "a_subdirectory_conftest_s_fixtures_reach_every_file_of_a_worker";
    if !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(suite.join("tests/deeper")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(suite.join(path), text).unwrap();
    write(
        "testfleet.toml",
        "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n",
    );
    write("tests/__init__.py", "");
    write(
        "tests/conftest.py",
        "import pytest\n\n@pytest.fixture(params=[1, 2])\ndef n(request):\n    return request.param\n",
    );
    for file in [
        "tests/test_a.py",
        "tests/test_b.py",
        "tests/deeper/test_c.py",
    ] {
        write(file, "def test_n(n):\n    assert n in (1, 2)\n");
    }
    // One agent of one slot: one worker collects all three files, one after another.
    let out = RunLine::local(1)
        .in_dir(&suite)
        .json()
        .args(&["--slots", "1"])
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&events(&out));
    assert_eq!((s.passed, s.infra_errors), (6, 0), "{s:?}");
}
