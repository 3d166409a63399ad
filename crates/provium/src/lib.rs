//! Provium host library: the engine that runs a suite, the Lua test framework, VM
//! handles and the agent client, and reporting. The `provium` binary is a thin CLI
//! over it (see ARCHITECTURE.md for the layers).

pub mod cancel;
pub mod cli;
pub mod config;
pub mod discover;
pub mod duration;
pub mod engine;
pub mod fixtures;
pub mod lua;
pub mod net;
pub mod pool;
pub mod procs;
pub mod qmp;
pub mod report;
pub mod runs;
pub mod shim;
pub mod tty;
pub mod vm;
