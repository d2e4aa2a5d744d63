//! Runners: how a test of a given kind is started and how its process's end is read: libtest
//! binaries (a test per process, or batches), tools that write JUnit (pytest, a command), and
//! pytest's long-lived workers for a pytest suite's batches.

pub mod junit;
pub mod libtest;
pub mod libtest_batch;
pub mod pytest_worker;
