//! Wire-to-model conversions: any bytes a client or agent sends decode to an error or to a value
//! that converts back to the same value; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use testfleet_model::{AttemptResult, RunEvent, RunSpec};
use testfleet_proto::pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = pb::RunSpec::decode(data)
        && let Ok(spec) = RunSpec::try_from(wire)
    {
        let again =
            RunSpec::try_from(pb::RunSpec::from(&spec)).expect("a valid spec converts back");
        assert_eq!(again, spec);
    }
    if let Ok(wire) = pb::RunEvent::decode(data)
        && let Ok(event) = RunEvent::try_from(wire)
    {
        let again = RunEvent::try_from(pb::RunEvent::from(&event)).expect("an event converts back");
        assert_eq!(again, event);
    }
    if let Ok(wire) = pb::AttemptResult::decode(data) {
        let _ = AttemptResult::try_from(wire);
    }
    if let Ok(wire) = pb::AgentMessage::decode(data)
        && let Some(pb::agent_message::Kind::TestFinished(f)) = wire.kind
    {
        let _ = testfleet_proto::parse_attempt_key(f.key);
        if let Some(r) = f.result {
            let _ = AttemptResult::try_from(r);
        }
    }
});
