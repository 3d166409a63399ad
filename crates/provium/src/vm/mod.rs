//! VM handles: QEMU launch, the agent link, acceleration and the default profile.
