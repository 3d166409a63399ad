//! Provium host library: CLI, discovery, configuration, scheduling, the Lua test
//! framework, VM handles and reporting.

pub mod cli;
pub mod config;
pub mod discover;
pub mod lua;
pub mod net;
pub mod procs;
pub mod qmp;
pub mod report;
pub mod runs;
pub mod schedule;
pub mod shim;
pub mod vm;
