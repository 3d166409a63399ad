//! QEMU process launch, console capture, boot deadline and teardown.
