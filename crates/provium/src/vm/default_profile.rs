//! The built-in `default` profile: host kernel, its modules, a generated busybox initramfs.

use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use thiserror::Error;

use crate::shim::CpioWriter;
use crate::vm::kernel::{self, KernelError};

/// Overrides the kernel image of the default profile.
pub const KERNEL_ENV: &str = "PROVIUM_KERNEL";
/// Where a static busybox lives when it is not on `PATH`.
const FALLBACK_BUSYBOX: &str = "/bin/busybox";
/// Bumped whenever the generated layout changes, so stale cache entries are not reused.
const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum DefaultProfileError {
    #[error("profile 'default': no kernel image (vmlinuz-*) under {dir}; install the linux-image-cloud-amd64 package or set PROVIUM_KERNEL to a bzImage")]
    NoKernel { dir: PathBuf },
    #[error("profile 'default': PROVIUM_KERNEL points to {path}, which does not exist")]
    KernelEnvMissing { path: PathBuf },
    #[error("profile 'default': {0}")]
    Kernel(#[from] KernelError),
    #[error("profile 'default': no busybox on PATH or at /bin/busybox; install the busybox-static package")]
    NoBusybox,
    #[error("profile 'default': {path} is not a statically linked busybox ({reason}); install the busybox-static package")]
    BusyboxNotStatic { path: PathBuf, reason: String },
    #[error("profile 'default': cannot list the applets of {path}: {reason}")]
    BusyboxApplets { path: PathBuf, reason: String },
    #[error("profile 'default': cache directory {path} belongs to uid {owner} with mode {mode:o}; it must be yours and not writable by others (remove it or set TMPDIR)")]
    UnsafeCache {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("profile 'default': cannot write the generated initramfs {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
}

/// The resolved default profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultProfile {
    pub kernel: PathBuf,
    /// The kernel release, naming `/lib/modules/<release>`.
    pub kernel_release: String,
    /// The generated busybox initramfs (uncompressed cpio).
    pub initrd: PathBuf,
}

pub use super::cache::cache_dir;

/// The generated busybox userland (initramfs) alone, for any kernel: what a profile
/// with a `kernel` and no `initrd` boots.
pub fn userland(cache: &Path) -> Result<PathBuf, DefaultProfileError> {
    busybox_initramfs(&find_busybox()?, cache)
}

/// Resolves the default profile, generating (or reusing) its initramfs in `cache`.
pub fn resolve(cache: &Path) -> Result<DefaultProfile, DefaultProfileError> {
    let kernel = find_kernel(Path::new("/boot"))?;
    let kernel_release = kernel::kernel_version(&kernel)?;
    let busybox = find_busybox()?;
    let initrd = busybox_initramfs(&busybox, cache)?;
    Ok(DefaultProfile {
        kernel,
        kernel_release,
        initrd,
    })
}

/// `PROVIUM_KERNEL`, else the newest `vmlinuz-*` in `boot_dir` by version order.
pub fn find_kernel(boot_dir: &Path) -> Result<PathBuf, DefaultProfileError> {
    if let Some(path) = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(DefaultProfileError::KernelEnvMissing { path });
        }
        return Ok(path);
    }
    let no_kernel = || DefaultProfileError::NoKernel {
        dir: boot_dir.to_path_buf(),
    };
    let entries = fs::read_dir(boot_dir).map_err(|_| no_kernel())?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("vmlinuz-"))
        .collect();
    names.sort_by(|a, b| version_cmp(a, b));
    names
        .pop()
        .map(|name| boot_dir.join(name))
        .ok_or_else(no_kernel)
}

/// Orders strings as `sort -V` does for kernel names: digit runs compare numerically.
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// `busybox` on `PATH`, else `/bin/busybox`, checked to be statically linked.
pub fn find_busybox() -> Result<PathBuf, DefaultProfileError> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("busybox"))
            .find(|candidate| candidate.is_file())
    });
    let path = on_path
        .or_else(|| Some(PathBuf::from(FALLBACK_BUSYBOX)).filter(|p| p.is_file()))
        .ok_or(DefaultProfileError::NoBusybox)?;
    check_static(&path)?;
    Ok(path)
}

/// A static ELF has no `PT_INTERP` program header.
fn check_static(path: &Path) -> Result<(), DefaultProfileError> {
    let not_static = |reason: &str| DefaultProfileError::BusyboxNotStatic {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let image = fs::read(path).map_err(|e| not_static(&format!("cannot read it: {e}")))?;
    if image.len() < 64 || &image[..4] != b"\x7fELF" || image[4] != 2 {
        return Err(not_static("not a 64-bit ELF executable"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(image[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(header) = image.get(at..at + 4) else {
            return Err(not_static("truncated program headers"));
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(header.try_into().expect("4 bytes")) == PT_INTERP {
            return Err(not_static("it is dynamically linked"));
        }
    }
    Ok(())
}

/// The generated initramfs for `busybox`, cached by busybox path, size and mtime.
fn busybox_initramfs(busybox: &Path, cache: &Path) -> Result<PathBuf, DefaultProfileError> {
    let meta = fs::metadata(busybox).map_err(|e| DefaultProfileError::BusyboxNotStatic {
        path: busybox.to_path_buf(),
        reason: format!("cannot stat it: {e}"),
    })?;
    let mut hasher = DefaultHasher::new();
    (
        LAYOUT_VERSION,
        busybox,
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
        .hash(&mut hasher);
    let target = cache.join(format!("default-initramfs-{:016x}.cpio", hasher.finish()));
    let cache_err = |source| DefaultProfileError::Cache {
        path: target.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache)
        .map_err(cache_err)?;
    check_private(cache)?;
    if target.is_file() {
        return Ok(target);
    }
    let archive = build_busybox_archive(busybox)?;
    // Concurrent runs may generate the same image: write aside, then rename atomically.
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = cache.join(format!(".tmp-{}-{nanos}", std::process::id()));
    fs::write(&temp, &archive).map_err(cache_err)?;
    fs::rename(&temp, &target).map_err(|e| {
        let _ = fs::remove_file(&temp);
        cache_err(e)
    })?;
    Ok(target)
}

/// The cache sits in a shared temporary directory: an image another user could
/// replace would run in every VM, so the directory must be ours and closed to others.
fn check_private(cache: &Path) -> Result<(), DefaultProfileError> {
    let meta = fs::metadata(cache).map_err(|source| DefaultProfileError::Cache {
        path: cache.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(DefaultProfileError::UnsafeCache {
            path: cache.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// busybox at `/bin/busybox`, one symlink per applet in `/bin`, merged-usr
/// symlinks, and the mount points the agent uses.
fn build_busybox_archive(busybox: &Path) -> Result<Vec<u8>, DefaultProfileError> {
    let applets_err = |reason: String| DefaultProfileError::BusyboxApplets {
        path: busybox.to_path_buf(),
        reason,
    };
    let output = Command::new(busybox)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| applets_err(e.to_string()))?;
    if !output.status.success() {
        return Err(applets_err(format!(
            "busybox --list exited with {}",
            output.status
        )));
    }
    let applets = String::from_utf8_lossy(&output.stdout).into_owned();
    let image = fs::read(busybox).map_err(|e| applets_err(e.to_string()))?;

    let mut cpio = CpioWriter::new(Vec::new());
    let result = (|| -> io::Result<Vec<u8>> {
        for dir in ["/dev", "/proc", "/sys", "/etc", "/run", "/mnt", "/var"] {
            cpio.dir(dir, 0o755)?;
        }
        cpio.dir("/tmp", 0o1777)?;
        cpio.dir("/root", 0o700)?;
        cpio.file("/bin/busybox", 0o755, &image)?;
        for applet in applets.lines().map(str::trim) {
            if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
                cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
            }
        }
        cpio.symlink("/sbin", "bin")?;
        cpio.symlink("/usr/bin", "../bin")?;
        cpio.symlink("/usr/sbin", "../bin")?;
        cpio.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
        cpio.file("/etc/group", 0o644, b"root:x:0:\n")?;
        cpio.finish()
    })();
    result.map_err(|e| applets_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::tests::parse;

    #[test]
    fn kernels_sort_by_version_not_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-56-cloud-amd64",
            "vmlinuz-5.10.0-30-amd64",
            "config-7.0.0",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        // PROVIUM_KERNEL is not set by the test harness; a set one would win, by design.
        if std::env::var_os(KERNEL_ENV).is_none() {
            let found = find_kernel(dir.path()).unwrap();
            assert_eq!(found, dir.path().join("vmlinuz-6.1.0-56-cloud-amd64"));
            let empty = tempfile::tempdir().unwrap();
            let message = find_kernel(empty.path()).unwrap_err().to_string();
            assert!(message.contains("linux-image-cloud-amd64"), "{message}");
        }
    }

    #[test]
    fn a_cache_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let cache = tempfile::tempdir().unwrap();
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let busybox = find_busybox().unwrap();
        let message = busybox_initramfs(&busybox, cache.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("mode 777"), "{message}");
    }

    #[test]
    fn dynamic_executables_are_refused_naming_busybox_static() {
        let message = check_static(Path::new("/bin/ls")).unwrap_err().to_string();
        assert!(message.contains("dynamically linked"), "{message}");
        assert!(message.contains("busybox-static"), "{message}");
    }

    #[test]
    fn generated_initramfs_has_busybox_applets_and_is_cached() {
        let busybox = find_busybox().expect("busybox-static is installed on test machines");
        let cache = tempfile::tempdir().unwrap();
        let first = busybox_initramfs(&busybox, cache.path()).unwrap();
        let modified = fs::metadata(&first).unwrap().modified().unwrap();
        let second = busybox_initramfs(&busybox, cache.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), modified);
        let entries = parse(&fs::read(&first).unwrap());
        let find = |name: &str| entries.iter().find(|e| e.name == name);
        assert_eq!(find("bin/busybox").unwrap().mode, 0o100755);
        assert_eq!(find("bin/sh").unwrap().data, b"busybox");
        assert_eq!(find("usr/bin").unwrap().data, b"../bin");
        assert_eq!(find("tmp").unwrap().mode, 0o041777);
    }
}
