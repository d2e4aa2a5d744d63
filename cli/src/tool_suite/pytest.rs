//! pytest: node ids from `pytest --collect-only -q`, a binary per test file, and the arguments that
//! make it run the ids it is given and write a JUnit report that carries each test's output.

use std::collections::BTreeMap;
use std::path::Path;

use testfleet_model::manifest::Dist;

use crate::cargo::ListedTest;
use crate::error::{CliError, CliResult};

/// Options for collecting and running alike: no cache written into the suite (or a bundle), and
/// node ids relative to the working directory, so the ids collected here are the ids an agent
/// passes back in its copy.
const COMMON: [&str; 6] = ["-m", "pytest", "-p", "no:cacheprovider", "--rootdir", "."];

/// The run command's arguments after the interpreter.
pub fn run_args(user_args: &[String]) -> Vec<String> {
    let mut args: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
    args.extend(
        ["-q", "-o", "junit_logging=all", "--junitxml={junit}"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(user_args.iter().cloned());
    args.push(testfleet_model::runner::TESTS.to_owned());
    args
}

/// testfleet's collection plugin: it writes the tests' `xdist_group` marks and shared fixtures.
const COLLECT_PLUGIN: &str = include_str!("testfleet_collect.py");

/// The suite's tests by file, in collection order, each with its group as `dist` says.
pub fn collect(
    python: &str,
    paths: &[String],
    user_args: &[String],
    dist: Dist,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> CliResult<Vec<(String, Vec<ListedTest>)>> {
    let helper = tempfile::tempdir()
        .and_then(|d| {
            std::fs::write(d.path().join("testfleet_collect.py"), COLLECT_PLUGIN).map(|()| d)
        })
        .map_err(|e| {
            CliError::TestListFailed(format!("cannot write pytest's collection plugin: {e}"))
        })?;
    let marks = helper.path().join("groups.json");
    let mut env = env.clone();
    let inherited = env
        .get("PYTHONPATH")
        .cloned()
        .or_else(|| std::env::var("PYTHONPATH").ok())
        .filter(|p| !p.is_empty());
    let path = helper.path().display().to_string();
    env.insert(
        "PYTHONPATH".into(),
        inherited.map_or(path.clone(), |p| format!("{path}:{p}")),
    );
    env.insert("TESTFLEET_COLLECT_OUT".into(), marks.display().to_string());
    let mut argv = vec![python.to_owned()];
    argv.extend(COMMON.iter().map(|s| s.to_string()));
    argv.extend(
        ["--collect-only", "-q", "-p", "testfleet_collect"]
            .iter()
            .map(|s| s.to_string()),
    );
    argv.extend(user_args.iter().cloned());
    argv.extend(paths.iter().cloned());
    // 5: pytest collected nothing, said here in words of ours.
    let (code, stdout) = super::run_listing(&argv, &[0, 5], dir, &env)?;
    if code == 5 {
        return Err(CliError::NoTests(format!(
            "pytest collected no test in {} (`{}`)",
            dir.display(),
            argv.join(" ")
        )));
    }
    let found: Collected = std::fs::read_to_string(&marks)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut files = by_file(&stdout);
    for t in files.iter_mut().flat_map(|(_, tests)| tests.iter_mut()) {
        t.group = dist.group_of(&t.name, found.groups.get(&t.name).map(String::as_str));
        if dist != Dist::Load {
            t.shares = found.shares.get(&t.name).cloned();
        }
    }
    Ok(files)
}

/// What the collection plugin writes, by node id.
#[derive(Default, serde::Deserialize)]
struct Collected {
    /// `xdist_group` marks.
    #[serde(default)]
    groups: BTreeMap<String, String>,
    /// The package, module or class whose broader fixtures the test uses.
    #[serde(default)]
    shares: BTreeMap<String, String>,
}

/// `-q` prints the node ids first, one per line, up to the first blank line (a summary and any
/// warnings follow, and those may quote node ids too).
fn by_file(stdout: &str) -> Vec<(String, Vec<ListedTest>)> {
    let mut files: Vec<(String, Vec<ListedTest>)> = Vec::new();
    for id in stdout
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.contains("::"))
    {
        let file = id.split("::").next().unwrap_or(id);
        let test = ListedTest {
            name: id.to_owned(),
            ignored: false,
            group: None,
            shares: None,
        };
        match files.iter_mut().find(|(f, _)| f == file) {
            Some((_, tests)) if !tests.iter().any(|t| t.name == id) => tests.push(test),
            Some(_) => {}
            None => files.push((file.to_owned(), vec![test])),
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_grouped_by_file_and_the_summary_is_not_read() {
        let out = "tests/test_a.py::test_one\ntests/test_a.py::TestX::test_two[1-2]\n\
                   tests/test_b.py::test_three\n\n3 tests collected in 0.01s\n\
                   tests/test_a.py::test_one\n  warning text\n";
        let files = by_file(out);
        let names = |i: usize| {
            files[i]
                .1
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "tests/test_a.py");
        assert_eq!(
            names(0),
            [
                "tests/test_a.py::test_one",
                "tests/test_a.py::TestX::test_two[1-2]"
            ]
        );
        assert_eq!(names(1), ["tests/test_b.py::test_three"]);
    }

    #[test]
    fn the_run_command_passes_the_ids_and_the_report_path() {
        let args = run_args(&["-m".into(), "not slow".into()]);
        assert_eq!(args.last().unwrap(), "{tests}");
        assert!(args.contains(&"--junitxml={junit}".to_owned()));
        assert!(args.windows(2).any(|w| w == ["-m", "not slow"]));
    }

    const SHARING: &str = r#"
import pytest

@pytest.fixture(scope="module")
def db():
    return 1

@pytest.fixture(scope="class")
def conn():
    return 2

def test_uses_module(db):
    pass

def test_uses_session(sess):
    pass

def test_plain():
    pass

class TestC:
    def test_uses_class(self, conn):
        pass

    def test_plain_in_class(self):
        pass

@pytest.mark.xdist_group(name="g")
def test_marked():
    pass
"#;

    /// Whether pytest runs here; `TESTFLEET_REQUIRE_TOOLS=1` (CI) makes its absence a failure.
    fn pytest_or_skip(test: &str) -> bool {
        let present = std::process::Command::new("python3")
            .args(["-m", "pytest", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            assert!(
                std::env::var("TESTFLEET_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "{test}: TESTFLEET_REQUIRE_TOOLS=1 but pytest cannot be run (pip install pytest)"
            );
            eprintln!("SKIPPED {test}: pytest is not installed (pip install pytest)");
        }
        present
    }

    #[test]
    fn collection_finds_marks_and_the_scope_of_fixtures_each_test_shares() {
        if !pytest_or_skip("collection_finds_marks_and_the_scope_of_fixtures_each_test_shares") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tests = dir.path().join("tests");
        std::fs::create_dir_all(tests.join("pkg")).unwrap();
        let write = |path: &str, text: &str| std::fs::write(dir.path().join(path), text).unwrap();
        write(
            "conftest.py",
            "import pytest\n\n@pytest.fixture(scope='session')\ndef sess():\n    return 0\n",
        );
        write("tests/test_mod.py", SHARING);
        write("tests/pkg/__init__.py", "");
        write(
            "tests/pkg/conftest.py",
            "import pytest\n\n@pytest.fixture(scope='package')\ndef pkg():\n    return 3\n",
        );
        write(
            "tests/pkg/test_p.py",
            "def test_uses_package(pkg):\n    pass\n",
        );
        let found = |dist: Dist| -> BTreeMap<String, (Option<String>, Option<String>)> {
            collect(
                "python3",
                &["tests".into()],
                &[],
                dist,
                dir.path(),
                &BTreeMap::new(),
            )
            .unwrap()
            .into_iter()
            .flat_map(|(_, tests)| tests)
            .map(|t| (t.name, (t.group, t.shares)))
            .collect()
        };
        let m = "tests/test_mod.py";
        let id = |name: &str| format!("{m}::{name}");
        let some = |s: &str| Some(s.to_owned());
        let expected = BTreeMap::from([
            (id("test_uses_module"), (None, some(m))),
            (id("test_uses_session"), (None, None)),
            (id("test_plain"), (None, None)),
            (id("TestC::test_uses_class"), (None, some(&id("TestC")))),
            (id("TestC::test_plain_in_class"), (None, None)),
            (id("test_marked"), (some("g"), None)),
            (
                "tests/pkg/test_p.py::test_uses_package".to_owned(),
                (None, some("tests/pkg")),
            ),
        ]);
        assert_eq!(found(Dist::LoadGroup), expected);
        // `dist = "load"`: every test goes wherever it is cheapest.
        assert!(
            found(Dist::Load)
                .values()
                .all(|(group, shares)| group.is_none() && shares.is_none())
        );
    }
}
