//! The Lua test framework: one fresh Lua 5.4 state per test file.

pub mod framework;
pub mod pack;
