//! Runners: how a test of a given kind is started and how its process's end is read: libtest
//! binaries (a test per process, or batches), and tools that write JUnit (pytest, a command).

pub mod junit;
pub mod libtest;
pub mod libtest_batch;
