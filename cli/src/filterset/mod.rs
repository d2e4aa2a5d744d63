//! Filtersets, nextest's language for choosing tests (`-E 'package(app) & test(~db)'`): parsed by
//! [`parse`], evaluated per test against what the workspace says of its binaries and packages.

mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use parse::ParseError;

/// What a predicate looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Test,
    Package,
    Deps,
    Rdeps,
    Binary,
    BinaryId,
    Kind,
}

impl Field {
    /// The matcher a bare name means, as in nextest: `contains` for test names, `glob` for
    /// packages and binary ids, `equal` for binary names and kinds.
    fn default_matcher(self) -> char {
        match self {
            Field::Test => '~',
            Field::Package | Field::Deps | Field::Rdeps | Field::BinaryId => '#',
            Field::Binary | Field::Kind => '=',
        }
    }
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Equal(String),
    Contains(String),
    Glob(globset::GlobMatcher),
    Regex(regex::Regex),
}

impl Matcher {
    pub fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Equal(v) => s == v,
            Matcher::Contains(v) => s.contains(v.as_str()),
            Matcher::Glob(g) => g.is_match(s),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Expr {
    All,
    None,
    Match(Field, Matcher),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A test as a filterset sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestItem<'a> {
    pub name: &'a str,
    pub package: &'a str,
    /// The target's name (`app` for a crate's unit tests, `it` for `tests/it.rs`).
    pub binary: &'a str,
    /// `app`, `app::it`, `app::bin/tool`, as nextest names them.
    pub binary_id: &'a str,
    /// `lib`, `test`, `bench`, `bin`, `example`, `proc-macro`.
    pub kind: &'a str,
}

/// The workspace's packages and their dependencies on each other, for `deps()` and `rdeps()`.
#[derive(Clone, Debug, Default)]
pub struct Packages {
    /// Package → the packages it depends on directly.
    pub deps: BTreeMap<String, BTreeSet<String>>,
}

impl Packages {
    /// The packages matching `m` and everything reachable from them through `next`.
    fn closure(
        &self,
        m: &Matcher,
        next: impl Fn(&str) -> Vec<String>,
        all: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        let mut found: BTreeSet<String> = all.iter().filter(|p| m.is_match(p)).cloned().collect();
        let mut todo: Vec<String> = found.iter().cloned().collect();
        while let Some(p) = todo.pop() {
            for q in next(&p) {
                if found.insert(q.clone()) {
                    todo.push(q);
                }
            }
        }
        found
    }

    fn names(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.deps.keys().cloned().collect();
        all.extend(self.deps.values().flatten().cloned());
        all
    }
}

/// The filtersets of `-E`, parsed; the first that does not parse is a usage error.
pub fn from_args(texts: &[String]) -> crate::error::CliResult<Vec<Filterset>> {
    texts
        .iter()
        .map(|t| Filterset::parse(t).map_err(|e| crate::error::CliError::Config(e.to_string())))
        .collect()
}

/// A test binary as filtersets name it, read from its binary id as nextest makes them:
/// `pkg` (a library's unit tests), `pkg::it` (an integration test), `pkg::bin/tool`,
/// `pkg::bench/speed`, `pkg::example/demo`. Another tool's suite's "binary" is a file: package
/// and binary are its path, kind `test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    package: String,
    binary: String,
    binary_id: String,
    kind: &'static str,
}

impl Target {
    pub fn of(b: &testfleet_model::Binary) -> Self {
        Self::from_id(
            &b.binary_id,
            matches!(b.runner, testfleet_model::Runner::Libtest),
        )
    }

    fn from_id(id: &str, rust: bool) -> Self {
        let (package, binary, kind) = match id.split_once("::") {
            _ if !rust => (id.to_owned(), id.to_owned(), "test"),
            None => (id.to_owned(), id.replace('-', "_"), "lib"),
            Some((pkg, rest)) => match rest.split_once('/') {
                Some(("bin", name)) => (pkg.to_owned(), name.to_owned(), "bin"),
                Some(("bench", name)) => (pkg.to_owned(), name.to_owned(), "bench"),
                Some(("example", name)) => (pkg.to_owned(), name.to_owned(), "example"),
                _ => (pkg.to_owned(), rest.to_owned(), "test"),
            },
        };
        Target {
            package,
            binary,
            binary_id: id.to_owned(),
            kind,
        }
    }

    /// Test `name` of this binary.
    pub fn item<'a>(&'a self, name: &'a str) -> TestItem<'a> {
        TestItem {
            name,
            package: &self.package,
            binary: &self.binary,
            binary_id: &self.binary_id,
            kind: self.kind,
        }
    }
}

/// A parsed filterset, ready to be asked about tests.
#[derive(Clone, Debug)]
pub struct Filterset {
    expr: Expr,
}

/// A filterset that does not parse, shown with a caret under the character it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiltersetError {
    pub text: String,
    pub error: ParseError,
}

impl fmt::Display for FiltersetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let col = self.text[..self.error.at.min(self.text.len())]
            .chars()
            .count();
        write!(
            f,
            "invalid filterset: {}\n  {}\n  {}^",
            self.error.message,
            self.text,
            " ".repeat(col)
        )
    }
}

impl std::error::Error for FiltersetError {}

impl Filterset {
    pub fn parse(text: &str) -> Result<Self, FiltersetError> {
        parse::parse(text)
            .map(|expr| Filterset { expr })
            .map_err(|error| FiltersetError {
                text: text.to_owned(),
                error,
            })
    }

    pub fn matches(&self, t: &TestItem<'_>, packages: &Packages) -> bool {
        eval(&self.expr, t, packages)
    }
}

fn eval(e: &Expr, t: &TestItem<'_>, packages: &Packages) -> bool {
    match e {
        Expr::All => true,
        Expr::None => false,
        Expr::Not(a) => !eval(a, t, packages),
        Expr::And(a, b) => eval(a, t, packages) && eval(b, t, packages),
        Expr::Or(a, b) => eval(a, t, packages) || eval(b, t, packages),
        Expr::Match(field, m) => match field {
            Field::Test => m.is_match(t.name),
            Field::Package => m.is_match(t.package),
            Field::Binary => m.is_match(t.binary),
            Field::BinaryId => m.is_match(t.binary_id),
            Field::Kind => m.is_match(t.kind),
            Field::Deps => {
                let all = packages.names();
                let next = |p: &str| {
                    packages
                        .deps
                        .get(p)
                        .map(|d| d.iter().cloned().collect())
                        .unwrap_or_default()
                };
                packages.closure(m, next, &all).contains(t.package)
            }
            Field::Rdeps => {
                let all = packages.names();
                let next = |p: &str| {
                    packages
                        .deps
                        .iter()
                        .filter(|(_, d)| d.contains(p))
                        .map(|(q, _)| q.clone())
                        .collect()
                };
                packages.closure(m, next, &all).contains(t.package)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace: `app` depends on `db`, which depends on `util`; `cli` depends on `app`.
    fn packages() -> Packages {
        let mut deps = BTreeMap::new();
        for (p, d) in [
            ("app", vec!["db"]),
            ("db", vec!["util"]),
            ("util", vec![]),
            ("cli", vec!["app"]),
        ] {
            deps.insert(p.to_owned(), d.into_iter().map(str::to_owned).collect());
        }
        Packages { deps }
    }

    fn tests() -> Vec<TestItem<'static>> {
        let t = |name, package, binary, binary_id, kind| TestItem {
            name,
            package,
            binary,
            binary_id,
            kind,
        };
        vec![
            t("tests::my_test", "app", "app", "app", "lib"),
            t("db_connects", "db", "it", "db::it", "test"),
            t("parse::round_trip", "util", "util", "util", "lib"),
            t("bench_parse", "util", "speed", "util::bench/speed", "bench"),
            t("cli_prints", "cli", "cli", "cli::bin/cli", "bin"),
            t("my_test_flaky", "cli", "it", "cli::it", "test"),
        ]
    }

    fn select(expr: &str) -> Vec<&'static str> {
        let f = Filterset::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        let p = packages();
        tests()
            .into_iter()
            .filter(|t| f.matches(t, &p))
            .map(|t| t.name)
            .collect()
    }

    #[test]
    fn nextest_s_documented_examples_select_what_they_say() {
        // Examples from nextest's filterset documentation, on a small workspace.
        assert_eq!(
            select("package(app) + deps(app)"),
            [
                "tests::my_test",
                "db_connects",
                "parse::round_trip",
                "bench_parse"
            ]
        );
        assert_eq!(
            select("deps(db)"),
            ["db_connects", "parse::round_trip", "bench_parse"]
        );
        assert_eq!(
            select("rdeps(db)"),
            [
                "tests::my_test",
                "db_connects",
                "cli_prints",
                "my_test_flaky"
            ]
        );
        assert_eq!(select("test(my_test)"), ["tests::my_test", "my_test_flaky"]);
        assert_eq!(
            select("test(my_test) | package(util)"),
            [
                "tests::my_test",
                "parse::round_trip",
                "bench_parse",
                "my_test_flaky"
            ]
        );
        assert_eq!(select("test(=my_test_flaky)"), ["my_test_flaky"]);
        assert_eq!(select("test(/^parse::/)"), ["parse::round_trip"]);
        assert_eq!(select("package(#u*)"), ["parse::round_trip", "bench_parse"]);
        assert_eq!(select("kind(test)"), ["db_connects", "my_test_flaky"]);
        assert_eq!(select("binary(it)"), ["db_connects", "my_test_flaky"]);
        assert_eq!(select("binary_id(*::it)"), ["db_connects", "my_test_flaky"]);
        assert_eq!(
            select("all() - kind(bench) - kind(bin)"),
            [
                "tests::my_test",
                "db_connects",
                "parse::round_trip",
                "my_test_flaky"
            ]
        );
        assert_eq!(
            select("not (kind(lib) or kind(test))"),
            ["bench_parse", "cli_prints"]
        );
        assert!(select("none()").is_empty());
        assert_eq!(select("all()").len(), 6);
    }

    #[test]
    fn targets_are_read_from_binary_ids_as_nextest_makes_them() {
        let t = |id| {
            let t = Target::from_id(id, true);
            (t.package, t.binary, t.kind)
        };
        assert_eq!(t("my-crate"), ("my-crate".into(), "my_crate".into(), "lib"));
        assert_eq!(t("my-crate::it"), ("my-crate".into(), "it".into(), "test"));
        assert_eq!(
            t("my-crate::bin/tool"),
            ("my-crate".into(), "tool".into(), "bin")
        );
        assert_eq!(
            t("my-crate::bench/speed"),
            ("my-crate".into(), "speed".into(), "bench")
        );
        let py = Target::from_id("tests/test_x.py", false);
        assert_eq!((py.binary.as_str(), py.kind), ("tests/test_x.py", "test"));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        // `a | b & c` is `a | (b & c)`; `!a & b` is `(!a) & b`; `a - b - c` is `(a - b) - c`.
        assert_eq!(
            select("package(cli) | package(util) & kind(bench)"),
            ["bench_parse", "cli_prints", "my_test_flaky"]
        );
        assert_eq!(select("!package(util) & kind(lib)"), ["tests::my_test"]);
        assert_eq!(
            select("(package(cli) | package(util)) & kind(bench)"),
            ["bench_parse"]
        );
        assert_eq!(
            select("package(#*) - package(cli) - package(util)"),
            ["tests::my_test", "db_connects"]
        );
    }

    #[test]
    fn errors_point_at_the_offending_character() {
        let at = |expr: &str| Filterset::parse(expr).unwrap_err();
        let e = at("test(a) & tset(b)");
        assert_eq!(e.error.at, 10);
        assert!(e.error.message.contains("unknown predicate `tset`"));
        assert!(
            e.to_string()
                .ends_with("\n  test(a) & tset(b)\n            ^"),
            "{e}"
        );
        assert_eq!(at("test(a) test(b)").error.at, 8);
        assert_eq!(at("test(a").error.at, 6);
        assert_eq!(at("(test(a)").error.at, 8);
        assert_eq!(at("test(/[/)").error.at, 6);
        assert!(at("test(/[/)").error.message.contains("invalid regex"));
        assert_eq!(at("all(x)").error.at, 4);
        assert_eq!(at("test()").error.at, 5);
        assert!(at("platform(host)").error.message.contains("not supported"));
        assert_eq!(at("& test(a)").error.at, 0);
    }
}
