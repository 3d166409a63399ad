//! Where the host keeps what runs share: generated initramfs images, base initrds,
//! modules disks and staged module trees, facts read from kernels.

use std::path::PathBuf;

/// `$PROVIUM_CACHE_DIR`, else `$TMPDIR/provium-cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("PROVIUM_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir().join("provium-cache"),
    }
}
