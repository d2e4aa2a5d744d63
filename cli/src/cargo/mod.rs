//! Turning a Cargo workspace into a test list: find the workspace, build the test binaries, and ask
//! each binary which tests it has.

mod build;
mod list;

pub use build::{BuildOutputs, TestBinary, Workspace, build_tests, locate_workspace};
pub use list::{ListedTest, list_tests};
