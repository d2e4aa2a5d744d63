//! A run event packed for the run's log: the events a run has by the million (a test started, a
//! test finished, a lease finished) without what the run's spec already says (the test's binary
//! and name) and without output (history keeps it), in postcard; every other kind stays whole in
//! memory, referred to by its place.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testfleet_model::{
    AttemptResult, AttemptStatus, CaseName, EventKind, Outcome, RunEvent, RunId, RunSpec,
    TestFinished,
};

#[derive(Serialize, Deserialize)]
enum Record<'a> {
    Started {
        index: u32,
        attempt: u32,
        #[serde(borrow)]
        agent: Cow<'a, str>,
        at: u64,
    },
    Finished {
        index: u32,
        attempt: u32,
        #[serde(borrow)]
        agent: Cow<'a, str>,
        at: u64,
        status: AttemptStatus,
        duration_ns: u64,
        exit_code: Option<i32>,
        signal: Option<i32>,
        output_omitted_bytes: u64,
        #[serde(borrow)]
        message: Cow<'a, str>,
        #[serde(borrow)]
        case: Option<(Cow<'a, str>, Cow<'a, str>)>,
        final_outcome: Option<Outcome>,
        lease_id: Option<u64>,
        quarantined: bool,
        /// The result had output, which history holds.
        output_on_disk: bool,
    },
    LeaseFinished {
        lease_id: u64,
        #[serde(borrow)]
        agent: Cow<'a, str>,
        tests: u32,
        failed: u32,
        at: u64,
    },
    /// The event at this place of the log's list of whole events.
    Whole(u32),
}

/// Appends `event` to `out` packed; false when it is not a kind that packs (the caller keeps it
/// whole and appends [`whole`]).
pub(super) fn pack(event: &RunEvent, out: &mut Vec<u8>) -> bool {
    let at = event.at_unix_ms;
    let record = match &event.kind {
        EventKind::TestStarted {
            test,
            attempt,
            agent_id,
        } => Record::Started {
            index: test.index,
            attempt: *attempt,
            agent: Cow::Borrowed(agent_id),
            at,
        },
        EventKind::TestFinished(f) => Record::Finished {
            index: f.test.index,
            attempt: f.attempt,
            agent: Cow::Borrowed(&f.agent_id),
            at,
            status: f.result.status,
            duration_ns: u64::try_from(f.result.duration.as_nanos()).unwrap_or(u64::MAX),
            exit_code: f.result.exit_code,
            signal: f.result.signal,
            output_omitted_bytes: f.result.output_omitted_bytes,
            message: Cow::Borrowed(&f.result.message),
            case: f.result.case.as_ref().map(|c| {
                (
                    Cow::Borrowed(c.classname.as_str()),
                    Cow::Borrowed(c.name.as_str()),
                )
            }),
            final_outcome: f.final_outcome,
            lease_id: f.lease_id,
            quarantined: f.quarantined,
            output_on_disk: !f.result.output.is_empty(),
        },
        EventKind::LeaseFinished {
            lease_id,
            agent_id,
            tests,
            failed,
        } => Record::LeaseFinished {
            lease_id: *lease_id,
            agent: Cow::Borrowed(agent_id),
            tests: *tests,
            failed: *failed,
            at,
        },
        _ => return false,
    };
    postcard::to_io(&record, out).expect("writing to a Vec cannot fail");
    true
}

/// Appends a reference to the `place`th whole event.
pub(super) fn whole(place: u32, out: &mut Vec<u8>) {
    postcard::to_io(&Record::Whole(place), out).expect("writing to a Vec cannot fail");
}

/// Where the events read from a log's bytes come from: the run, its spec (for the tests' names)
/// and its whole events.
pub(super) struct Unpacker<'a> {
    pub run_id: RunId,
    pub spec: &'a RunSpec,
    pub whole: &'a [RunEvent],
}

/// One event unpacked, and whether its output is in history.
pub(super) struct Unpacked {
    pub event: RunEvent,
    pub output_on_disk: bool,
}

impl Unpacker<'_> {
    /// Unpacks the first record of `bytes` as event `seq`; returns the rest. `skip`: only step
    /// over it.
    pub fn next<'b>(
        &self,
        seq: u64,
        bytes: &'b [u8],
        skip: bool,
    ) -> Result<(Option<Unpacked>, &'b [u8]), postcard::Error> {
        let (record, rest) = postcard::take_from_bytes::<Record<'_>>(bytes)?;
        if skip {
            return Ok((None, rest));
        }
        let event = |at_unix_ms, kind| RunEvent {
            seq,
            run_id: self.run_id,
            at_unix_ms,
            kind,
        };
        let unpacked = match record {
            Record::Started {
                index,
                attempt,
                agent,
                at,
            } => Unpacked {
                event: event(
                    at,
                    EventKind::TestStarted {
                        test: self.spec.test_ref(index),
                        attempt,
                        agent_id: agent.into_owned(),
                    },
                ),
                output_on_disk: false,
            },
            Record::Finished {
                index,
                attempt,
                agent,
                at,
                status,
                duration_ns,
                exit_code,
                signal,
                output_omitted_bytes,
                message,
                case,
                final_outcome,
                lease_id,
                quarantined,
                output_on_disk,
            } => Unpacked {
                event: event(
                    at,
                    EventKind::TestFinished(TestFinished {
                        test: self.spec.test_ref(index),
                        attempt,
                        agent_id: agent.into_owned(),
                        result: AttemptResult {
                            status,
                            duration: Duration::from_nanos(duration_ns),
                            exit_code,
                            signal,
                            output: Vec::new(),
                            output_omitted_bytes,
                            message: message.into_owned(),
                            case: case.map(|(classname, name)| CaseName {
                                classname: classname.into_owned(),
                                name: name.into_owned(),
                            }),
                        },
                        final_outcome,
                        lease_id,
                        quarantined,
                    }),
                ),
                output_on_disk,
            },
            Record::LeaseFinished {
                lease_id,
                agent,
                tests,
                failed,
                at,
            } => Unpacked {
                event: event(
                    at,
                    EventKind::LeaseFinished {
                        lease_id,
                        agent_id: agent.into_owned(),
                        tests,
                        failed,
                    },
                ),
                output_on_disk: false,
            },
            Record::Whole(place) => {
                let mut event = self
                    .whole
                    .get(place as usize)
                    .cloned()
                    .ok_or(postcard::Error::DeserializeBadEncoding)?;
                event.seq = seq;
                Unpacked {
                    event,
                    output_on_disk: false,
                }
            }
        };
        Ok((Some(unpacked), rest))
    }
}
