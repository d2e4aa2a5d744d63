//! Domain types of testfleet, free of any runtime, transport or storage: ids, run specs, outcomes,
//! events and exit codes. Every other crate speaks in these types.

pub mod event;
pub mod exit_code;
pub mod ids;
pub mod junit;
pub mod manifest;
pub mod outcome;
mod relative_path;
pub mod report;
pub mod runner;
pub mod service;
pub mod session;
pub mod spec;
pub mod test_settings;
mod test_spec;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use event::{
    EventKind, NoticeLevel, RunEvent, RunState, RunSummary, ServiceTiming, TestFinished, TestRef,
};
pub use ids::{AgentId, IdError, LeaseId, RunId, TestId, name_shows_binary, test_label};
pub use manifest::{Manifest, ManifestError};
pub use outcome::{
    AttemptResult, AttemptStatus, CaseName, Outcome, RetryDecision, decide_after_attempt,
};
pub use runner::{IdStyle, Runner};
pub use service::{
    ImageSource, MAX_PULL_TIMEOUT, PullPolicy, Scope, ServiceSpec, Template, WaitStrategy,
};
pub use session::AttemptKey;
pub use spec::{Binary, OriginTree, QuarantinePolicy, RunSpec, SpecError, TestSpec};
pub use test_settings::{LeakTimeout, RetryPolicy, TestGroup, TestSettings};
