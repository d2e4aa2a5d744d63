//! How a binary's tests are started and read back: a libtest binary (the default, a test per
//! process or a batch), or any tool that writes JUnit (pytest, or a command the suite names),
//! given the tests' ids and the path to write its report to.

use serde::{Deserialize, Serialize};

/// In a JUnit runner's arguments, the argument that stands for the tests' ids, one argument each.
pub const TESTS: &str = "{tests}";
/// In a JUnit runner's arguments, where the report's path goes (anywhere inside an argument).
pub const JUNIT: &str = "{junit}";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Runner {
    /// A Rust test binary: `BIN --exact NAME`, read by exit status or libtest's output.
    #[default]
    Libtest,
    /// A tool that writes JUnit: the binary's `path` is the program (a bare name is looked up on
    /// the agent's PATH) and these its arguments, with [`TESTS`] and [`JUNIT`] filled in.
    Junit { args: Vec<String>, ids: IdStyle },
}

/// How a test's id names its JUnit test case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdStyle {
    /// pytest node ids (`tests/test_db.py::TestPool::test_reuse[2]`), as pytest names their
    /// cases: classname `tests.test_db.TestPool`, name `test_reuse[2]`.
    Pytest,
    /// The case's name, or its classname and name joined by `.`, `::`, `/` or `#`.
    Plain,
}

impl Runner {
    /// The wire's name of the runner: empty for libtest.
    pub fn kind(&self) -> &'static str {
        match self {
            Runner::Libtest => "",
            Runner::Junit {
                ids: IdStyle::Pytest,
                ..
            } => "pytest",
            Runner::Junit {
                ids: IdStyle::Plain,
                ..
            } => "command",
        }
    }

    /// The runner a wire message names, or why none.
    pub fn from_kind(kind: &str, args: Vec<String>) -> Result<Runner, String> {
        let ids = match kind {
            "" if args.is_empty() => return Ok(Runner::Libtest),
            "" => return Err("a libtest binary takes no runner arguments".into()),
            "pytest" => IdStyle::Pytest,
            "command" => IdStyle::Plain,
            other => return Err(format!("unknown runner `{other}`")),
        };
        let r = Runner::Junit { args, ids };
        r.validate()?;
        Ok(r)
    }

    /// A JUnit runner's arguments hold [`TESTS`] once, as a whole argument, and [`JUNIT`].
    pub fn validate(&self) -> Result<(), String> {
        let Runner::Junit { args, .. } = self else {
            return Ok(());
        };
        if args.iter().filter(|a| *a == TESTS).count() != 1 {
            return Err(format!(
                "the run command must have `{TESTS}` once, as an argument of its own: {args:?}"
            ));
        }
        if !args.iter().any(|a| a.contains(JUNIT)) {
            return Err(format!(
                "the run command must say where the JUnit report goes with `{JUNIT}`: {args:?}"
            ));
        }
        Ok(())
    }

    /// A JUnit runner's arguments for `tests`, with the report at `junit`.
    pub fn expand(args: &[String], tests: &[String], junit: &str) -> Vec<String> {
        let mut out = Vec::with_capacity(args.len() + tests.len());
        for a in args {
            if a == TESTS {
                out.extend(tests.iter().cloned());
            } else {
                out.push(a.replace(JUNIT, junit));
            }
        }
        out
    }
}

impl IdStyle {
    /// The classname and name the tool's own JUnit report gives test `id`, where the id says:
    /// pytest's, from the node id; `None` for plain ids.
    pub fn case_of(self, id: &str) -> Option<(String, String)> {
        (self == IdStyle::Pytest).then(|| pytest_case(id))
    }

    /// Whether the JUnit case `classname`/`name` reports the test `id`.
    pub fn reports(self, id: &str, classname: &str, name: &str) -> bool {
        if self == IdStyle::Pytest {
            let (c, n) = pytest_case(id);
            if c == classname && n == name {
                return true;
            }
        }
        id == name
            || id
                .strip_prefix(classname)
                .and_then(|rest| rest.strip_suffix(name))
                .is_some_and(|sep| matches!(sep, "." | "::" | "/" | "#"))
    }
}

/// The classname and name pytest's JUnit report gives node id `id` (its `mangle_test_address`):
/// the file's path dotted without `.py`, then the classes; the last part, parameters and all.
fn pytest_case(id: &str) -> (String, String) {
    let (path, params) = match id.find('[') {
        Some(i) => id.split_at(i),
        None => (id, ""),
    };
    let mut names: Vec<String> = path.split("::").map(str::to_owned).collect();
    let file = names[0].replace('/', ".");
    names[0] = file.strip_suffix(".py").unwrap_or(&file).to_owned();
    let mut name = names.pop().unwrap_or_default();
    name.push_str(params);
    (names.join("."), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytest_node_ids_match_the_cases_pytest_writes() {
        let p = IdStyle::Pytest;
        assert!(p.reports(
            "tests/test_db.py::test_insert",
            "tests.test_db",
            "test_insert"
        ));
        assert!(p.reports(
            "tests/test_db.py::TestPool::test_reuse[a/b::c]",
            "tests.test_db.TestPool",
            "test_reuse[a/b::c]"
        ));
        assert!(!p.reports(
            "tests/test_db.py::test_insert",
            "tests.test_db",
            "test_other"
        ));
        assert!(!p.reports(
            "tests/test_db.py::test_insert",
            "tests.test_other",
            "test_insert"
        ));
    }

    #[test]
    fn plain_ids_match_a_name_or_a_joined_classname_and_name() {
        let p = IdStyle::Plain;
        assert!(p.reports("adds", "math", "adds"));
        assert!(p.reports("math.adds", "math", "adds"));
        assert!(p.reports("math::adds", "math", "adds"));
        assert!(p.reports("math/adds", "math", "adds"));
        assert!(!p.reports("math-adds", "math", "adds"));
        assert!(!p.reports("other.adds", "math", "adds"));
    }

    #[test]
    fn the_run_command_needs_its_placeholders_and_expands_them() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = Runner::from_kind("command", args(&["--out={junit}", "{tests}"])).unwrap();
        let Runner::Junit { args: a, .. } = &ok else {
            unreachable!()
        };
        assert_eq!(
            Runner::expand(a, &["x".into(), "y z".into()], "/tmp/r.xml"),
            ["--out=/tmp/r.xml", "x", "y z"]
        );
        assert!(
            Runner::from_kind("command", args(&["{junit}"]))
                .unwrap_err()
                .contains("{tests}")
        );
        assert!(Runner::from_kind("command", args(&["--t={tests}", "{junit}"])).is_err());
        assert!(
            Runner::from_kind("command", args(&["{tests}"]))
                .unwrap_err()
                .contains("{junit}")
        );
        assert!(Runner::from_kind("nose", vec![]).is_err());
        assert_eq!(Runner::from_kind("", vec![]), Ok(Runner::Libtest));
        assert_eq!(ok.kind(), "command");
    }
}
