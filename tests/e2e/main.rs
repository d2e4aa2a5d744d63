//! End-to-end tests: the real `testfleet` binary, real processes, real loopback sockets, real sled.
//! The fixture suites under `tests/fixtures/` are built and run; their expected outcomes are in
//! `fixture.rs`.

mod annotations;
mod bad_input;
mod bundles;
mod ci_fanout;
mod compose_stacks;
mod containers;
mod dashboard;
mod deploy;
mod docker_proxy;
mod engine_restart;
mod file_bundles;
mod filtersets;
mod fixture;
mod full_disk;
mod hermetic;
mod history;
mod import;
mod limits;
mod local_run;
mod loopback_registry;
mod multihost;
mod nextest_profiles;
mod orders_example;
mod pulls;
mod pytest_collectors;
mod pytest_outcomes;
mod remote_run;
mod reruns;
mod runners;
mod security;
mod support;
mod traces;
mod web;
