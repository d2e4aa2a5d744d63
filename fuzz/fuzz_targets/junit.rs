//! JUnit writing: whatever names, messages and output tests produce (control characters, invalid
//! UTF-8, XML syntax), the report is well-formed XML that holds every test.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use testfleet_model::junit::JunitReporter;
use testfleet_model::{TestFinished, 
    AttemptResult, AttemptStatus, EventKind, Outcome, RunEvent, RunId, RunState, RunSummary,
    TestRef,
};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (binary, name, message) = (text(), text(), text());
    let output = data.to_vec();
    let mut r = JunitReporter::default();
    let mut seq = 0;
    let mut emit = |kind: EventKind| {
        seq += 1;
        r.on_event(&RunEvent {
            seq,
            run_id: RunId(1),
            at_unix_ms: 0,
            kind,
        });
    };
    emit(EventKind::RunStarted {
        suite: binary.clone(),
        total_tests: 1,
        skipped: vec![],
        quarantined: vec![],
    });
    let statuses = [
        AttemptStatus::Failed,
        AttemptStatus::TimedOut,
        AttemptStatus::Passed,
    ];
    for (i, status) in statuses.iter().enumerate() {
        let mut result = AttemptResult::infra_error(&message);
        result.status = *status;
        result.output = output.clone();
        result.duration = Duration::from_millis(i as u64);
        emit(EventKind::TestFinished(TestFinished {
            test: TestRef {
                index: 0,
                binary_id: binary.clone(),
                name: name.clone(),
            },
            attempt: i as u32 + 1,
            agent_id: message.clone(),
            result,
            final_outcome: (i == 2).then_some(Outcome::Flaky),
            lease_id: None,
            quarantined: false,
        }));
    }
    emit(EventKind::RunFinished {
        summary: RunSummary::default(),
        state: RunState::Finished,
    });
    let xml = r.to_xml().expect("a report always serializes");
    let doc = roxmltree::Document::parse(&xml).expect("the report is well-formed XML");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .count(),
        1
    );
});
