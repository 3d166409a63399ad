//! Kernel image facts: the bzImage version string and module dependency resolution.
