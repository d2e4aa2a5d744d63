//! End-to-end tests: the real `testfleet` binary, real processes, real loopback sockets, real sled.
//! The fixture suites under `tests/fixtures/` are built and run; their expected outcomes are in
//! `fixture.rs`.

mod bad_input;
mod bundles;
mod containers;
mod fixture;
mod history;
mod limits;
mod local_run;
mod multihost;
mod remote_run;
mod security;
mod support;
