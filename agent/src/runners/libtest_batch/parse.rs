//! Reading libtest's human output as it streams, for a process that runs several tests one after
//! another (`--test-threads 1 --nocapture`). libtest prints `test NAME ... ` when a test starts
//! and flushes, then the test's own output, then `ok`, `FAILED` or `ignored` when it ends. A
//! verdict counts only as the whole rest of a line: a test printing `ok` by itself could fake a
//! pass, so anything else on the line is the test's output, and a test whose verdict cannot be
//! read is failed, never passed. Captured output of failed tests (without `--nocapture`) comes at
//! the end, in `---- NAME stdout ----` sections.

use std::collections::HashMap;

use crate::capture::Capture;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
    Ignored,
    /// Another test started before this one's verdict could be read.
    Unreadable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Started(usize),
    Finished(usize, Verdict),
}

pub struct Parser {
    /// Test name → its position in the batch.
    names: HashMap<String, usize>,
    line: Vec<u8>,
    /// Where a verdict may begin in `line`: after the start marker if the line has one.
    verdict_from: usize,
    marker_seen: bool,
    /// The test that started and has no verdict yet.
    current: Option<usize>,
    /// Everything after the summary's `failures:` header.
    tail: Vec<u8>,
    in_tail: bool,
    outputs: Vec<Capture>,
    /// Stray output that came while no test was running: the next test to start printed it (its
    /// stderr can be read before the stdout line that says it started).
    pending: Vec<u8>,
    cap: usize,
}

fn verdict(text: &[u8]) -> Option<Verdict> {
    match text.trim_ascii_end() {
        b"ok" => Some(Verdict::Ok),
        b"FAILED" => Some(Verdict::Failed),
        t if t == b"ignored" || t.starts_with(b"ignored, ") => Some(Verdict::Ignored),
        _ => None,
    }
}

impl Parser {
    pub fn new(names: &[&str], output_cap: usize) -> Self {
        Parser {
            names: names
                .iter()
                .enumerate()
                .map(|(i, n)| ((*n).to_owned(), i))
                .collect(),
            line: Vec::new(),
            verdict_from: 0,
            marker_seen: false,
            current: None,
            pending: Vec::new(),
            cap: output_cap,
            tail: Vec::new(),
            in_tail: false,
            outputs: names.iter().map(|_| Capture::new(output_cap)).collect(),
        }
    }

    /// Output that is not libtest's (stderr) goes to the test running when it came.
    pub fn stray(&mut self, data: &[u8]) {
        match self.current {
            Some(i) => self.outputs[i].push(data),
            None => {
                let room = self.cap.saturating_sub(self.pending.len());
                self.pending
                    .extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }

    /// Feeds standard output; returns what started and finished in it.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Event> {
        let mut events = vec![];
        while !data.is_empty() {
            let (chunk, rest, complete) = match data.iter().position(|b| *b == b'\n') {
                Some(p) => (&data[..p], &data[p + 1..], true),
                None => (data, &[][..], false),
            };
            self.line.extend_from_slice(chunk);
            data = rest;
            if !self.in_tail && !self.marker_seen {
                self.try_start(&mut events);
            }
            if complete {
                self.end_line(&mut events);
            }
        }
        events
    }

    /// `test NAME ... ` at the start of a line, for a name of this batch, starts that test.
    fn try_start(&mut self, events: &mut Vec<Event>) {
        let Some(rest) = self.line.strip_prefix(b"test ") else {
            return;
        };
        let Some(p) = rest.windows(5).position(|w| w == b" ... ") else {
            return;
        };
        let name = String::from_utf8_lossy(&rest[..p]);
        let Some(&i) = self.names.get(name.as_ref()) else {
            return;
        };
        if let Some(prev) = self.current.take() {
            events.push(Event::Finished(prev, Verdict::Unreadable));
        }
        self.marker_seen = true;
        self.verdict_from = 5 + p + 5;
        self.current = Some(i);
        let pending = std::mem::take(&mut self.pending);
        self.outputs[i].push(&pending);
        events.push(Event::Started(i));
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        let from = std::mem::take(&mut self.verdict_from).min(line.len());
        self.marker_seen = false;
        if self.in_tail {
            self.tail.extend_from_slice(&line);
            self.tail.push(b'\n');
            return;
        }
        let text = &line[from..];
        match self.current {
            Some(i) => match verdict(text) {
                Some(v) => {
                    self.current = None;
                    events.push(Event::Finished(i, v));
                }
                None => {
                    self.outputs[i].push(text);
                    self.outputs[i].push(b"\n");
                }
            },
            None if line == b"failures:" => self.in_tail = true,
            None => {}
        }
    }

    /// The output of every test: what was captured for it, with its failure section if it failed.
    pub fn finish(mut self) -> Vec<(Vec<u8>, u64)> {
        let tail = String::from_utf8_lossy(&self.tail).into_owned();
        let mut section: Option<usize> = None;
        for line in tail.split_inclusive('\n') {
            let trimmed = line.trim_end();
            if let Some(name) = trimmed
                .strip_prefix("---- ")
                .and_then(|r| r.strip_suffix(" stdout ----"))
            {
                section = self.names.get(name).copied();
                continue;
            }
            if trimmed == "failures:" {
                section = None;
                continue;
            }
            if let Some(i) = section {
                self.outputs[i].push(line.as_bytes());
            }
        }
        self.outputs.into_iter().map(Capture::finish).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str], names: &[&str]) -> (Vec<Event>, Vec<String>) {
        let mut p = Parser::new(names, 4096);
        let mut events = vec![];
        for c in chunks {
            events.extend(p.feed(c.as_bytes()));
        }
        let outputs = p
            .finish()
            .into_iter()
            .map(|(o, _)| String::from_utf8(o).unwrap())
            .collect();
        (events, outputs)
    }

    #[test]
    fn starts_and_verdicts_are_read_as_they_stream() {
        let (events, outputs) = parse(
            &[
                "\nrunning 3 tests\ntest a::one ... ",
                "ok\ntest a::two ... ",
                "FAILED\ntest a::three ... ignored, slow\n",
                "\nfailures:\n\n---- a::two stdout ----\nleft: 1\nright: 2\n\n\nfailures:\n    a::two\n\ntest result: FAILED. 1 passed; 1 failed\n",
            ],
            &["a::one", "a::two", "a::three"],
        );
        use Event::*;
        assert_eq!(
            events,
            [
                Started(0),
                Finished(0, Verdict::Ok),
                Started(1),
                Finished(1, Verdict::Failed),
                Started(2),
                Finished(2, Verdict::Ignored)
            ]
        );
        assert_eq!(outputs[0], "");
        assert!(
            outputs[1].starts_with("left: 1\nright: 2\n"),
            "{:?}",
            outputs[1]
        );
        assert_eq!(outputs[2], "");
    }

    #[test]
    fn a_tests_own_output_is_its_own_and_never_a_verdict() {
        let (events, outputs) = parse(
            &[
                "test t1 ... hello\nstatus ok\nok\n",
                "test t2 ... it is ok\n",
                "FAILED\n",
            ],
            &["t1", "t2"],
        );
        use Event::*;
        assert_eq!(
            events,
            [
                Started(0),
                Finished(0, Verdict::Ok),
                Started(1),
                Finished(1, Verdict::Failed)
            ]
        );
        assert_eq!(outputs[0], "hello\nstatus ok\n");
        assert_eq!(outputs[1], "it is ok\n");
    }

    #[test]
    fn a_verdict_lost_in_output_without_a_newline_fails_the_test() {
        let (events, _) = parse(
            &["test t1 ... no newlineok\ntest t2 ... ok\n"],
            &["t1", "t2"],
        );
        use Event::*;
        assert_eq!(
            events,
            [
                Started(0),
                Finished(0, Verdict::Unreadable),
                Started(1),
                Finished(1, Verdict::Ok)
            ]
        );
    }

    #[test]
    fn a_test_that_never_ends_stays_current() {
        let mut p = Parser::new(&["t1", "t2"], 1024);
        let events = p.feed(b"test t1 ... ");
        assert_eq!(events, [Event::Started(0)]);
        p.stray(b"thread 'main' panicked\n");
        assert_eq!(p.current, Some(0));
        let outputs = p.finish();
        assert!(String::from_utf8_lossy(&outputs[0].0).contains("panicked"));
    }

    #[test]
    fn names_it_was_not_asked_for_are_ignored() {
        let (events, _) = parse(&["test other ... ok\n"], &["t1"]);
        assert!(events.is_empty());
    }

    #[test]
    fn stderr_read_before_a_test_s_start_line_is_that_test_s() {
        let mut p = Parser::new(&["a", "b"], 1024);
        p.feed(b"\nrunning 2 tests\ntest a ... ok\n");
        p.stray(b"about to abort\n");
        assert_eq!(p.feed(b"test b ... "), vec![Event::Started(1)]);
        let outputs = p.finish();
        assert_eq!(outputs[1].0, b"about to abort\n");
        assert_eq!(outputs[0].0, b"");
    }
}
