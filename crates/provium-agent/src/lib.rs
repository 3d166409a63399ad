//! The guest agent's pure request planning, as a library beside the binary so its
//! unit tests and the fuzz targets (`fuzz/`) reach it on the host, without a guest.
//! The binary (`main.rs`) holds everything that acts on the system.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod plan;
