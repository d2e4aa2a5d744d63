//! Which role each gRPC method needs: agents connect and fetch bundles; readers query; clients do
//! everything a reader does and also submit, cancel, upload and quarantine. A method not listed
//! here (one added later) needs a client token until someone decides otherwise.

use testfleet_security::Role;

const AGENT_METHODS: &[&str] = &[
    "/testfleet.v1.AgentGateway/Session",
    "/testfleet.v1.Coordinator/DownloadBundle",
    "/testfleet.v1.Coordinator/GetManifest",
    "/testfleet.v1.Coordinator/DownloadBlob",
];

const READER_METHODS: &[&str] = &[
    "/testfleet.v1.Coordinator/WatchRun",
    "/testfleet.v1.Coordinator/GetRun",
    "/testfleet.v1.Coordinator/GetRunTests",
    "/testfleet.v1.Coordinator/ListRuns",
    "/testfleet.v1.Coordinator/ListAgents",
    "/testfleet.v1.Coordinator/ListFlaky",
    "/testfleet.v1.Coordinator/GetTimings",
    "/testfleet.v1.Coordinator/GetTestHistory",
    "/testfleet.v1.Coordinator/ClassifyFailures",
];

pub fn required_role(path: &str) -> Role {
    if AGENT_METHODS.contains(&path) {
        Role::Agent
    } else if READER_METHODS.contains(&path) {
        Role::Reader
    } else {
        Role::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_protocol_has_the_role_it_should() {
        // The whole protocol, so a renamed method cannot slip to a weaker role unnoticed.
        let expected = [
            ("Coordinator/SubmitRun", Role::Client),
            ("Coordinator/CancelRun", Role::Client),
            ("Coordinator/HasBundle", Role::Client),
            ("Coordinator/UploadBundle", Role::Client),
            ("Coordinator/Quarantine", Role::Client),
            ("Coordinator/ImportRun", Role::Client),
            ("Coordinator/WatchRun", Role::Reader),
            ("Coordinator/GetRun", Role::Reader),
            ("Coordinator/GetRunTests", Role::Reader),
            ("Coordinator/ListRuns", Role::Reader),
            ("Coordinator/ListAgents", Role::Reader),
            ("Coordinator/ListFlaky", Role::Reader),
            ("Coordinator/GetTimings", Role::Reader),
            ("Coordinator/GetTestHistory", Role::Reader),
            ("Coordinator/ClassifyFailures", Role::Reader),
            ("Coordinator/DownloadBundle", Role::Agent),
            ("Coordinator/FindMissingBlobs", Role::Client),
            ("Coordinator/UploadBlob", Role::Client),
            ("Coordinator/PutManifest", Role::Client),
            ("Coordinator/GetManifest", Role::Agent),
            ("Coordinator/DownloadBlob", Role::Agent),
            ("AgentGateway/Session", Role::Agent),
        ];
        let proto = include_str!("../../../proto/proto/testfleet/v1/testfleet.proto");
        let rpcs = proto.matches("  rpc ").count();
        assert_eq!(
            rpcs,
            expected.len(),
            "a method was added: give it a role here"
        );
        for (m, role) in expected {
            let name = m.rsplit('/').next().unwrap();
            assert!(
                proto.contains(&format!("rpc {name}(")),
                "{name} is not in the protocol"
            );
            assert_eq!(required_role(&format!("/testfleet.v1.{m}")), role, "{m}");
        }
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), Role::Client);
    }
}
