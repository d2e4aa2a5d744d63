//! Runners: how a test of a given kind is started and how its process's end is read. Only libtest
//! (Rust test binaries) exists so far; pytest and command runners slot in beside it.

pub mod libtest;
pub mod libtest_batch;
