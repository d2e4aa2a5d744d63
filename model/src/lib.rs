//! Domain types of testfleet, free of any runtime, transport or storage: ids, run specs, outcomes,
//! events and exit codes. Every other crate speaks in these types.

pub mod event;
pub mod exit_code;
pub mod ids;
pub mod outcome;
pub mod spec;

pub use event::{EventKind, NoticeLevel, RunEvent, RunState, RunSummary, TestRef};
pub use ids::{AgentId, IdError, LeaseId, RunId, TestId};
pub use outcome::{AttemptResult, AttemptStatus, Outcome, RetryDecision, decide_after_attempt};
pub use spec::{Binary, RunSpec, SpecError, TestSpec};
