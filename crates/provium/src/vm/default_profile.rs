//! The built-in `default` profile: host kernel, its modules, a generated busybox initramfs.
