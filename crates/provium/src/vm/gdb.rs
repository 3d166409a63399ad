//! gdb on the guest kernel: a loopback port for QEMU's gdb stub, the kernel's
//! `vmlinux` when it can be found, and the command that attaches to it.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// `PROVIUM_GDB=1`: every boot of the run gets a stub.
pub fn wanted_by_environment() -> bool {
    std::env::var("PROVIUM_GDB").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A free TCP port on 127.0.0.1 (the kernel picks it; it is free when we return).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The ELF image with symbols for `kernel`: `vmlinux` beside a build tree's
/// `arch/x86/boot/bzImage`, `vmlinux` beside the image itself, or for a distribution
/// kernel `/boot/vmlinuz-R` the debug image Debian's `-dbg` package installs.
pub fn vmlinux_for(kernel: &Path) -> Option<PathBuf> {
    let dir = kernel.parent()?;
    let mut candidates = vec![dir.join("vmlinux")];
    if let Some(tree) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
        // <tree>/arch/x86/boot/bzImage → <tree>/vmlinux
        candidates.push(tree.join("vmlinux"));
    }
    if let Some(release) = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
    {
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/boot/vmlinux-{release}"
        )));
        candidates.push(dir.join(format!("vmlinux-{release}")));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// The command that attaches gdb to the stub at `address` (`localhost:PORT`).
pub fn attach_command(vmlinux: Option<&Path>, address: &str) -> String {
    match vmlinux {
        Some(vmlinux) => format!("gdb {} -ex 'target remote {address}'", vmlinux.display()),
        None => format!("gdb -ex 'target remote {address}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlinux_is_found_beside_a_build_tree_kernel() {
        let tree = tempfile::tempdir().unwrap();
        let boot = tree.path().join("arch/x86/boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("bzImage"), "").unwrap();
        assert_eq!(vmlinux_for(&boot.join("bzImage")), None);
        std::fs::write(tree.path().join("vmlinux"), "").unwrap();
        assert_eq!(
            vmlinux_for(&boot.join("bzImage")),
            Some(tree.path().join("vmlinux"))
        );
        assert_eq!(
            attach_command(Some(Path::new("/k/vmlinux")), "localhost:1234"),
            "gdb /k/vmlinux -ex 'target remote localhost:1234'"
        );
        assert_ne!(free_port().unwrap(), 0);
    }
}
