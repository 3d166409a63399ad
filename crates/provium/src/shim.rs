//! The initramfs shim: a newc cpio archive appended to the profile initramfs.
