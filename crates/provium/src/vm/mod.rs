//! VM handles: QEMU launch, the agent link, acceleration and the default profile.

pub mod accel;
pub mod agent_bin;
pub mod default_profile;
pub mod kernel;
pub mod link;
pub mod qemu;
