//! Helpers shared by the Rust real-VM tests.

use provium::vm::default_profile;
use provium::vm::BootProfile;

/// The built-in default profile: the host's kernel and the generated busybox initramfs.
pub fn default_profile() -> BootProfile {
    let resolved = default_profile::resolve(&default_profile::cache_dir())
        .expect("the default profile resolves (linux-image-cloud-amd64, busybox-static)");
    BootProfile::from_default(&resolved)
}

/// Short run directories keep socket paths under 108 bytes.
pub fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pv")
        .tempdir_in("/tmp")
        .unwrap()
}
