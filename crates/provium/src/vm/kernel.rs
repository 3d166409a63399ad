//! Kernel image facts: the bzImage version string and module dependency resolution.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// The modules the agent needs when the kernel has them as modules: the virtio
/// transport, the virtio console (its channel) and virtio-blk (disks).
pub const AGENT_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
];

/// What a VM on a host network needs (`vm:boot{networks = …}`), loaded only then.
pub const NET_MODULES: &[&str] = &["virtio_net"];

/// Offset of the `HdrS` magic in the x86 boot protocol header.
const HDRS_OFFSET: usize = 0x202;
/// Offset of the `kernel_version` pointer; the string is at pointer + 0x200.
const KERNEL_VERSION_OFFSET: usize = 0x20e;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("cannot read kernel {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("kernel {path} is not an x86 bzImage ({reason}); give a bzImage (arch/x86/boot/bzImage), not vmlinux or another format")]
    NotBzImage { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    ModulesIndex { path: PathBuf, source: io::Error },
    #[error("cannot decompress module {path}: {reason}")]
    Decompress { path: PathBuf, reason: String },
}

/// Reads the kernel release (`6.1.0-56-cloud-amd64`) from a bzImage header.
pub fn kernel_version(path: &Path) -> Result<String, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_bz = |reason: String| KernelError::NotBzImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    // The setup code (and the version string inside it) is at most 64 sectors.
    let mut head = Vec::with_capacity(0x8000);
    file.by_ref()
        .take(0x8200)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.len() < KERNEL_VERSION_OFFSET + 2 {
        return Err(not_bz(format!("only {} bytes", head.len())));
    }
    if &head[HDRS_OFFSET..HDRS_OFFSET + 4] != b"HdrS" {
        return Err(not_bz("no HdrS magic at 0x202".to_string()));
    }
    let pointer =
        u16::from_le_bytes([head[KERNEL_VERSION_OFFSET], head[KERNEL_VERSION_OFFSET + 1]]);
    if pointer == 0 {
        return Err(not_bz("kernel_version pointer is 0".to_string()));
    }
    let start = pointer as usize + 0x200;
    let tail = head.get(start..).ok_or_else(|| {
        not_bz(format!(
            "kernel_version pointer {pointer:#x} past the setup code"
        ))
    })?;
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    let text = String::from_utf8_lossy(&tail[..end]);
    let release = text.split_whitespace().next().unwrap_or("");
    if release.is_empty() {
        return Err(not_bz("empty kernel_version string".to_string()));
    }
    Ok(release.to_string())
}

/// How a module file on the host is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleCompression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// One module to load in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module name with `-` normalised to `_` (`virtio_pci`).
    pub name: String,
    pub path: PathBuf,
    pub compression: ModuleCompression,
}

impl ModuleFile {
    /// The uncompressed module image. Compressed modules are expanded on the host
    /// with the system tool, so the guest kernel needs no `CONFIG_MODULE_DECOMPRESS`.
    pub fn load(&self) -> Result<Vec<u8>, KernelError> {
        let (tool, package) = match self.compression {
            ModuleCompression::None => {
                return fs::read(&self.path).map_err(|source| KernelError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
            ModuleCompression::Xz => ("xz", "xz-utils"),
            ModuleCompression::Zstd => ("zstd", "zstd"),
            ModuleCompression::Gzip => ("gzip", "gzip"),
        };
        let output = Command::new(tool)
            .arg("-dc")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| KernelError::Decompress {
                path: self.path.clone(),
                reason: format!("cannot run {tool} ({e}); install the {package} package"),
            })?;
        if !output.status.success() {
            return Err(KernelError::Decompress {
                path: self.path.clone(),
                reason: format!(
                    "{tool} -dc failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(output.stdout)
    }
}

/// The modules to load, dependencies first, plus what was looked for and not found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePlan {
    pub modules: Vec<ModuleFile>,
    /// Wanted modules that are neither built in nor present as modules.
    pub missing: Vec<String>,
}

/// Normalises a module path or name to the kernel's module name.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

fn compression_of(path: &str) -> ModuleCompression {
    if path.ends_with(".ko.xz") {
        ModuleCompression::Xz
    } else if path.ends_with(".ko.zst") {
        ModuleCompression::Zstd
    } else if path.ends_with(".ko.gz") {
        ModuleCompression::Gzip
    } else {
        ModuleCompression::None
    }
}

/// Resolves `wanted` against `<modules_dir>/modules.dep`, skipping modules listed
/// in `modules.builtin`. A kernel without a modules directory yields an empty plan:
/// its virtio drivers may be built in, and otherwise the agent uses the UART.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<ModulePlan, KernelError> {
    let dep_path = modules_dir.join("modules.dep");
    if !modules_dir.is_dir() {
        return Ok(ModulePlan::default());
    }
    let index_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::ModulesIndex { path, source }
    };
    let dep_text = fs::read_to_string(&dep_path).map_err(index_err(&dep_path))?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin: BTreeSet<String> = match fs::read_to_string(&builtin_path) {
        Ok(text) => text.lines().map(module_name).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(index_err(&builtin_path)(e)),
    };

    // name -> (relative path, dependency names)
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let names = rest.split_whitespace().map(module_name).collect();
        deps.insert(module_name(module), (module.to_string(), names));
    }

    let mut plan = ModulePlan::default();
    let mut placed = BTreeSet::new();
    for name in wanted {
        let name = module_name(name);
        if builtin.contains(&name) {
            continue;
        }
        if !deps.contains_key(&name) {
            plan.missing.push(name);
            continue;
        }
        place(
            &name,
            &deps,
            &builtin,
            modules_dir,
            &mut placed,
            &mut plan,
            0,
        );
    }
    Ok(plan)
}

/// Depth-first placement so every module follows its dependencies.
fn place(
    name: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
    modules_dir: &Path,
    placed: &mut BTreeSet<String>,
    plan: &mut ModulePlan,
    depth: usize,
) {
    // modules.dep is acyclic; the depth bound only guards against a corrupt index.
    if depth > 64 || builtin.contains(name) || !placed.insert(name.to_string()) {
        return;
    }
    let Some((relative, needs)) = deps.get(name) else {
        plan.missing.push(name.to_string());
        return;
    };
    for dep in needs {
        place(dep, deps, builtin, modules_dir, placed, plan, depth + 1);
    }
    plan.modules.push(ModuleFile {
        name: name.to_string(),
        path: modules_dir.join(relative),
        compression: compression_of(relative),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage_with_version(version: &str) -> Vec<u8> {
        let mut image = vec![0u8; 0x4000];
        image[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        let pointer: u16 = 0x3000 - 0x200;
        image[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2]
            .copy_from_slice(&pointer.to_le_bytes());
        image[0x3000..0x3000 + version.len()].copy_from_slice(version.as_bytes());
        image
    }

    #[test]
    fn version_is_read_from_the_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bzImage");
        fs::write(
            &path,
            bzimage_with_version("6.9.0-test (me@host) #1 SMP PREEMPT_DYNAMIC"),
        )
        .unwrap();
        assert_eq!(kernel_version(&path).unwrap(), "6.9.0-test");
    }

    #[test]
    fn non_bzimage_is_rejected_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        fs::write(&path, vec![0x7fu8; 0x1000]).unwrap();
        let message = kernel_version(&path).unwrap_err().to_string();
        assert!(message.contains("vmlinux"), "{message}");
        assert!(message.contains("not an x86 bzImage"), "{message}");
        let missing = kernel_version(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, KernelError::Read { .. }));
    }

    #[test]
    fn modules_resolve_dependencies_first_and_skip_builtins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/block/virtio_blk.ko\n",
        )
        .unwrap();
        let plan = resolve_modules(dir.path(), AGENT_MODULES).unwrap();
        let names: Vec<&str> = plan.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_console"
            ]
        );
        assert_eq!(plan.modules[5].compression, ModuleCompression::Xz);
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
    }

    #[test]
    fn missing_modules_directory_gives_an_empty_plan() {
        let plan =
            resolve_modules(Path::new("/nonexistent/provium/modules"), AGENT_MODULES).unwrap();
        assert!(plan.modules.is_empty());
    }

    #[test]
    fn gzip_modules_are_decompressed_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("m.ko");
        fs::write(&plain, b"\x7fELF module body").unwrap();
        let status = Command::new("gzip").arg(&plain).status().unwrap();
        assert!(status.success());
        let module = ModuleFile {
            name: "m".into(),
            path: dir.path().join("m.ko.gz"),
            compression: ModuleCompression::Gzip,
        };
        assert_eq!(module.load().unwrap(), b"\x7fELF module body");
    }
}
