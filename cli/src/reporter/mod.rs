//! Reporters turn the run's event stream into what people and machines read: a live human report,
//! JSON lines, and a JUnit file at the end. They see only events.

mod annotations;
mod human;
mod markdown;

use std::io::Write;
use std::path::PathBuf;

use testfleet_model::{IdStyle, RunEvent};

use crate::error::{CliError, CliResult};
pub use annotations::GithubAnnotations;
pub use human::HumanReporter;
pub use markdown::MarkdownReporter;
pub use testfleet_model::junit::JunitReporter;

pub struct Report {
    human: Option<HumanReporter>,
    /// JSON lines on stdout, until stdout's reader goes away.
    json: bool,
    junit: Option<(JunitReporter, PathBuf)>,
    markdown: Option<(MarkdownReporter, PathBuf)>,
    annotations: Option<GithubAnnotations>,
}

impl Report {
    pub fn new(json: bool, junit: Option<PathBuf>, mode: String) -> Self {
        Report {
            human: (!json).then(|| HumanReporter::new(mode)),
            json,
            junit: junit.map(|p| (JunitReporter::default(), p)),
            markdown: None,
            annotations: None,
        }
    }

    /// Names the JUnit file's cases as the suite's tool does in its own report (pytest's).
    pub fn with_case_names(mut self, style: Option<IdStyle>) -> Self {
        if let (Some((j, _)), Some(style)) = (&mut self.junit, style) {
            j.name_cases_like(style);
        }
        self
    }

    /// Also appends a Markdown summary to `path` when the run ends.
    pub fn with_markdown(mut self, path: Option<PathBuf>) -> Self {
        self.markdown = path.map(|p| (MarkdownReporter::default(), p));
        self
    }

    /// Also prints GitHub Actions annotations for the failed tests when the run ends; `base` is
    /// where the suite's relative paths start.
    pub fn with_annotations(mut self, base: Option<PathBuf>) -> Self {
        self.annotations = base.map(GithubAnnotations::new);
        self
    }

    pub fn on_event(&mut self, e: &RunEvent) {
        if self.json {
            let line = serde_json::to_string(e).expect("events serialize");
            if writeln!(std::io::stdout().lock(), "{line}").is_err() {
                // The reader went away (`| head`): the run still goes to its end, its history
                // and its exit code; only the events stop.
                self.json = false;
                eprintln!(
                    "stdout was closed: the run goes on to its end, without printing its events"
                );
            }
        }
        if let Some(h) = &mut self.human {
            h.on_event(e);
        }
        if let Some((j, _)) = &mut self.junit {
            j.on_event(e);
        }
        if let Some((m, _)) = &mut self.markdown {
            m.on_event(e);
        }
        if let Some(a) = &mut self.annotations {
            a.on_event(e);
        }
    }

    /// Whether any part of the report shows what passing attempts printed: only the stream of
    /// every event as JSON does (JUnit, Markdown and the terminal show failures' output).
    pub fn shows_passing_output(&self) -> bool {
        self.json
    }

    /// Whether the report wants to know what history says of the run's failures.
    pub fn wants_failure_classes(&self) -> bool {
        self.markdown.is_some()
    }

    pub fn set_failure_classes(&mut self, classes: Vec<testfleet_model::report::FailureClass>) {
        if let Some((m, _)) = &mut self.markdown {
            m.set_classes(classes);
        }
    }

    /// Prints a line for people (on stderr, so JSON on stdout stays clean).
    pub fn note(&self, line: &str) {
        match &self.human {
            Some(h) => h.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(self) -> CliResult<()> {
        if let Some(a) = &self.annotations {
            let mut out = std::io::stdout().lock();
            for line in a.lines() {
                // The runner reads workflow commands from stdout; a closed stdout loses only them.
                let _ = writeln!(out, "{line}");
            }
        }
        if let Some((m, path)) = &self.markdown {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(m.to_markdown().as_bytes()))
                .map_err(|e| {
                    CliError::Internal(anyhow::anyhow!(
                        "cannot write the Markdown summary to {}: {e}",
                        path.display()
                    ))
                })?;
        }
        if let Some((j, path)) = self.junit {
            let xml = j.to_xml().map_err(|e| {
                CliError::Internal(anyhow::anyhow!("cannot write the JUnit report: {e}"))
            })?;
            std::fs::write(&path, xml).map_err(|e| {
                CliError::Internal(anyhow::anyhow!(
                    "cannot write JUnit file {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }
}
