//! Wire-to-model conversions: any bytes a client or agent sends decode to an error or to a value
//! that converts back to the same value; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use testfleet_model::session::AgentMessage;
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
        && let Ok(message) = AgentMessage::try_from(wire)
    {
        let again = AgentMessage::try_from(pb::AgentMessage::from(message.clone()))
            .expect("an agent message converts back");
        assert_eq!(again, message);
    }
    if let Ok(wire) = pb::CoordinatorMessage::decode(data)
        && let Ok(Some(message)) = testfleet_proto::coordinator_message_from_wire(wire)
    {
        let again = testfleet_proto::coordinator_message_from_wire(pb::CoordinatorMessage::from(
            message.clone(),
        ))
        .expect("a coordinator message converts back");
        assert_eq!(again, Some(message));
    }
});
