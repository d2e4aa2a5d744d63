//! What a remote run ships: the bundle's contents (the workspace's files, and the build outputs
//! its tests run or load), where each part came from on this machine, and packing it.

pub mod cargo_layout;
pub mod pack;
pub mod workspace_files;
