//! Scheduling: file dispatch and the VM resource pool.

pub mod dispatch;
pub mod pool;
