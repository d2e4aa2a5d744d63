//! GitHub Actions annotations: one `::error` workflow command per test that failed the run, placed
//! at the line its failure names (a Rust panic's location, or the last line of the suite's own
//! files in a pytest traceback), titled with the test's name. Printed on stdout at the end of the
//! run, where the runner reads workflow commands.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use testfleet_model::{EventKind, RunEvent, TestFinished};

/// A failure's place in the source, as the repository names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub col: Option<u32>,
}

/// One `::error` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub title: String,
    pub location: Option<Location>,
    pub message: String,
}

/// At most this many annotations: GitHub shows ten errors per step anyway, and a run with
/// thousands of failures should not print thousands of lines more.
const MAX: usize = 50;

pub struct GithubAnnotations {
    /// Where the suite's relative paths start (the workspace root, or the tool suite's dir).
    base: PathBuf,
    /// The repository's root (`GITHUB_WORKSPACE`), which annotation paths are relative to.
    repo: PathBuf,
    failed: Vec<Annotation>,
    more: usize,
}

/// `thread 'x' panicked at src/lib.rs:10:5:` (Rust 1.73 on), or the older
/// `panicked at 'message', src/lib.rs:10:5`.
static PANIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"panicked at (?:'(?s:.*?)', )?([^\s:']+):(\d+):(\d+)").expect("valid regex")
});

/// pytest's traceback lines: `tests/test_orders.py:42: AssertionError`.
static PYTEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^([^\s:]+\.py):(\d+): ").expect("valid regex"));

impl GithubAnnotations {
    pub fn new(base: PathBuf) -> Self {
        let repo = std::env::var_os("GITHUB_WORKSPACE")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        GithubAnnotations {
            base,
            repo,
            failed: vec![],
            more: 0,
        }
    }

    pub fn on_event(&mut self, e: &RunEvent) {
        let EventKind::TestFinished(TestFinished {
            test,
            result,
            final_outcome: Some(outcome),
            quarantined,
            ..
        }) = &e.kind
        else {
            return;
        };
        // A quarantined test's failure does not fail the run: no error for it.
        if !outcome.fails_run() || *quarantined {
            return;
        }
        if self.failed.len() == MAX {
            self.more += 1;
            return;
        }
        let output = String::from_utf8_lossy(&result.output);
        let location = locate(&output).map(|l| self.in_repo(l));
        let mut message = outcome.as_str().to_owned();
        if !result.message.is_empty() {
            message = format!("{message}: {}", result.message);
        }
        if let Some(why) = panic_message(&output) {
            message = format!("{message}\n{why}");
        }
        let title = if testfleet_model::name_shows_binary(&test.binary_id, &test.name) {
            test.name.to_string()
        } else {
            format!("{} {}", test.binary_id, test.name)
        };
        self.failed.push(Annotation {
            title,
            location,
            message,
        });
    }

    /// The path as the repository names it: relative to its root when it is under it.
    fn in_repo(&self, mut l: Location) -> Location {
        let path = Path::new(&l.file);
        let full = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        };
        // Both as the filesystem names them: either may have been given with `..` or a symlink.
        let full = std::fs::canonicalize(&full).unwrap_or(full);
        let repo = std::fs::canonicalize(&self.repo).unwrap_or_else(|_| self.repo.clone());
        if let Ok(rel) = full.strip_prefix(&repo) {
            l.file = rel.display().to_string();
        }
        l
    }

    /// The workflow commands, one per line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.failed.iter().map(Annotation::command).collect();
        if self.more > 0 {
            lines.push(format!(
                "::warning title=testfleet::{} more failed tests have no annotation of their own; see the run's report",
                self.more
            ));
        }
        lines
    }
}

impl Annotation {
    /// `::error file=F,line=L,col=C,title=T::MESSAGE`, escaped as GitHub's toolkit escapes them.
    pub fn command(&self) -> String {
        let mut props = vec![];
        if let Some(l) = &self.location {
            props.push(format!("file={}", property(&l.file)));
            props.push(format!("line={}", l.line));
            if let Some(c) = l.col {
                props.push(format!("col={c}"));
            }
        }
        props.push(format!("title={}", property(&self.title)));
        format!("::error {}::{}", props.join(","), data(&self.message))
    }
}

/// Where a failure's output says it failed: the first panic's location (a test's own assertion
/// comes before any panic it causes elsewhere), else the last line of a pytest traceback that is
/// in a relative path (the suite's own file, not a library's).
pub fn locate(output: &str) -> Option<Location> {
    if let Some(c) = PANIC.captures(output) {
        return Some(Location {
            file: c[1].to_owned(),
            line: c[2].parse().ok()?,
            col: c[3].parse().ok(),
        });
    }
    PYTEST
        .captures_iter(output)
        .filter(|c| !c[1].starts_with('/'))
        .last()
        .and_then(|c| {
            Some(Location {
                file: c[1].to_owned(),
                line: c[2].parse().ok()?,
                col: None,
            })
        })
}

/// The first panic's message: the lines after `panicked at FILE:LINE:COL:`, at most a few, up to
/// the note, the backtrace, a blank line or a line of libtest's own (stdout and stderr are
/// captured from two pipes, so libtest's `running 1 test` may land right after the message).
fn panic_message(output: &str) -> Option<String> {
    let at = PANIC.find(output)?;
    let rest = output[at.end()..]
        .strip_prefix(':')
        .unwrap_or(&output[at.end()..]);
    let libtest = |l: &str| {
        [
            "note:",
            "stack backtrace:",
            "running ",
            "test ",
            "failures:",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let lines: Vec<&str> = rest
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty() && !libtest(l))
        .take(8)
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// A workflow command's message: `%`, CR and LF escaped.
fn data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property: also `:` and `,`.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_s_location_and_message_are_found_in_both_formats() {
        let out = "running 1 test\nthread 'tests::fails' (123) panicked at src/lib.rs:42:9:\nassertion `left == right` failed\n  left: 1\n right: 2\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            locate(out),
            Some(Location {
                file: "src/lib.rs".into(),
                line: 42,
                col: Some(9)
            })
        );
        assert_eq!(
            panic_message(out).unwrap(),
            "assertion `left == right` failed\n  left: 1\n right: 2"
        );
        // libtest's own stdout, read after the message from its other pipe, is not part of it.
        let late =
            "thread 't' panicked at src/lib.rs:3:5:\nboom\n\nrunning 1 test\ntest t ... FAILED\n";
        assert_eq!(panic_message(late).unwrap(), "boom");
        let old = "thread 'x' panicked at 'boom, really', tests/it.rs:7:5\n";
        assert_eq!(locate(old).unwrap().file, "tests/it.rs");
        assert_eq!(locate(old).unwrap().line, 7);
    }

    #[test]
    fn a_pytest_traceback_s_last_line_in_the_suite_is_its_location() {
        let out = "tests/test_orders.py:40: in test_pay\n    pay(order)\napp/orders.py:12: in pay\n    raise ValueError\n/usr/lib/python3/dist-packages/x.py:9: ValueError\napp/orders.py:12: ValueError\n";
        assert_eq!(
            locate(out),
            Some(Location {
                file: "app/orders.py".into(),
                line: 12,
                col: None
            })
        );
        assert_eq!(locate("no location here"), None);
    }

    /// The format and escaping of GitHub's documented workflow command:
    /// `::error file={name},line={line},col={col},title={title}::{message}`, where data escapes
    /// `%`, CR, LF and properties also `:` and `,`.
    #[test]
    fn commands_follow_github_s_workflow_command_format() {
        let a = Annotation {
            title: "fixture-basic tests::fails, again".into(),
            location: Some(Location {
                file: "crates/a,b/src/lib.rs".into(),
                line: 42,
                col: Some(9),
            }),
            message: "failed: 100% wrong\r\nleft: 1".into(),
        };
        assert_eq!(
            a.command(),
            "::error file=crates/a%2Cb/src/lib.rs,line=42,col=9,title=fixture-basic tests%3A%3Afails%2C again::failed: 100%25 wrong%0D%0Aleft: 1"
        );
        let bare = Annotation {
            title: "t".into(),
            location: None,
            message: "timed out".into(),
        };
        assert_eq!(bare.command(), "::error title=t::timed out");
    }

    #[test]
    fn paths_become_relative_to_the_repository() {
        let mut a = GithubAnnotations::new(PathBuf::from("/repo/rust"));
        a.repo = PathBuf::from("/repo");
        let l = a.in_repo(Location {
            file: "src/lib.rs".into(),
            line: 1,
            col: None,
        });
        assert_eq!(l.file, "rust/src/lib.rs");
        let outside = a.in_repo(Location {
            file: "/home/u/.cargo/registry/x.rs".into(),
            line: 1,
            col: None,
        });
        assert_eq!(outside.file, "/home/u/.cargo/registry/x.rs");
    }
}
