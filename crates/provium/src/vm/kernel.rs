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
    #[error("kernel {path} is neither an x86 bzImage nor a vmlinux ELF ({reason}); give arch/x86/boot/bzImage or the build's vmlinux")]
    NotBzImage { path: PathBuf, reason: String },
    #[error("kernel {path} is a vmlinux ELF without a PVH entry note, which QEMU cannot boot directly; build it with CONFIG_PVH=y, or give the bzImage")]
    NoPvhNote { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    ModulesIndex { path: PathBuf, source: io::Error },
    #[error("cannot decompress module {path}: {reason}")]
    Decompress { path: PathBuf, reason: String },
}

/// What kind of kernel image a profile names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// `arch/x86/boot/bzImage`: the x86 boot protocol.
    BzImage,
    /// An uncompressed `vmlinux` with a PVH entry note: QEMU boots it directly.
    PvhElf,
}

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point, in a note named "Xen".
const PVH_NOTE_TYPE: u32 = 18;

/// What [`kernel_image`] and [`kernel_version`] found in a vmlinux, by its path, size
/// and modification time: reading a 40 MB ELF on every boot would cost more than the
/// boot path it enables saves.
type ElfFacts = (KernelImage, String);

/// A file's identity for the cache: path, size, modification time.
type FileKey = (PathBuf, u64, i64, i64);
type ElfCache = std::sync::Mutex<std::collections::HashMap<FileKey, ElfFacts>>;

fn elf_cache() -> &'static ElfCache {
    static CACHE: std::sync::OnceLock<ElfCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The PVH note check and release of a vmlinux, read once per version of the file.
fn elf_facts(path: &Path) -> Result<ElfFacts, KernelError> {
    use std::os::unix::fs::MetadataExt;
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let key = (
        path.to_path_buf(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    );
    if let Some(facts) = elf_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(facts.clone());
    }
    let remembered = facts_file(&super::cache::cache_dir(), &key);
    if let Some(facts) = read_facts(&remembered) {
        elf_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, facts.clone());
        return Ok(facts);
    }
    let data = fs::read(path).map_err(read_err)?;
    if !has_pvh_note(&data) {
        return Err(KernelError::NoPvhNote {
            path: path.to_path_buf(),
        });
    }
    const BANNER: &[u8] = b"Linux version ";
    let at = data
        .windows(BANNER.len())
        .position(|w| w == BANNER)
        .ok_or_else(|| KernelError::NotBzImage {
            path: path.to_path_buf(),
            reason: "an ELF without a `Linux version` banner".to_string(),
        })?;
    let rest = &data[at + BANNER.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .unwrap_or(rest.len());
    let facts = (
        KernelImage::PvhElf,
        String::from_utf8_lossy(&rest[..end]).into_owned(),
    );
    write_facts(&remembered, &facts);
    elf_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, facts.clone());
    Ok(facts)
}

/// Where the facts of a vmlinux are kept between runs, named by its identity (path,
/// size, modification time): each `provium` process would otherwise read the whole
/// ELF once (~80 ms of a boot that takes 0.7 s on the fast path).
fn facts_file(cache: &Path, key: &FileKey) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    cache
        .join("kernels")
        .join(format!("vmlinux-{:016x}", hasher.finish()))
}

/// The remembered facts: `pvh <release>`; `None` when absent or not in that form.
fn read_facts(file: &Path) -> Option<ElfFacts> {
    let text = fs::read_to_string(file).ok()?;
    let release = text.trim_end().strip_prefix("pvh ")?;
    (!release.is_empty() && !release.contains(char::is_whitespace))
        .then(|| (KernelImage::PvhElf, release.to_string()))
}

/// Best effort: a cache that cannot be written only costs the next run a read.
fn write_facts(file: &Path, facts: &ElfFacts) {
    let Some(dir) = file.parent() else { return };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = file.with_extension(format!("{}-{n}.tmp", std::process::id()));
    if fs::write(&temp, format!("pvh {}\n", facts.1)).is_ok() && fs::rename(&temp, file).is_err() {
        let _ = fs::remove_file(&temp);
    }
}

/// Tells a bzImage from a PVH-bootable ELF (an ELF without the note is an error that
/// says what to do).
pub fn kernel_image(path: &Path) -> Result<KernelImage, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(read_err)?;
    if &magic != b"\x7fELF" {
        return Ok(KernelImage::BzImage);
    }
    elf_facts(path).map(|(image, _)| image)
}

/// Whether an ELF64 image has a `Xen` note of type 18 in one of its PT_NOTE
/// segments.
fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    // ELF64, little-endian.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let header = phoff as usize + i * usize::from(phentsize);
        if u32_at(header) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(offset), Some(size)) = (u64_at(header + 8), u64_at(header + 32)) else {
            continue;
        };
        let (mut at, end) = (offset as usize, (offset + size) as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize).unwrap_or(&[]);
            if kind == PVH_NOTE_TYPE && name.starts_with(b"Xen") {
                return true;
            }
            let padded = |n: u32| (n as usize).div_ceil(4) * 4;
            at += 12 + padded(namesz) + padded(descsz);
        }
    }
    false
}

/// Reads the kernel release (`6.1.0-56-cloud-amd64`) from a bzImage header, or from
/// the banner (`Linux version …`) in a vmlinux.
pub fn kernel_version(path: &Path) -> Result<String, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    if kernel_image(path)? == KernelImage::PvhElf {
        return elf_facts(path).map(|(_, release)| release);
    }
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

    /// A minimal ELF64 with one PT_NOTE segment holding one note, and a banner.
    fn elf(note_name: &[u8], note_type: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELF64
        elf[5] = 1; // little-endian
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = Vec::new();
        note.extend((note_name.len() as u32).to_le_bytes());
        note.extend(4u32.to_le_bytes());
        note.extend(note_type.to_le_bytes());
        note.extend(note_name);
        note.resize(note.len().div_ceil(4) * 4, 0);
        note.extend([0u8; 4]);
        let notes_at = 0x40 + 56;
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&(notes_at as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend(ph);
        elf.extend(note);
        elf.extend(b"\0Linux version 6.1.192-provium (provium@provium) #1 SMP\0");
        elf
    }

    #[test]
    fn a_vmlinux_with_a_pvh_note_boots_directly_and_names_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let pvh = dir.path().join("vmlinux");
        fs::write(&pvh, elf(b"Xen\0", PVH_NOTE_TYPE)).unwrap();
        assert_eq!(kernel_image(&pvh).unwrap(), KernelImage::PvhElf);
        assert_eq!(kernel_version(&pvh).unwrap(), "6.1.192-provium");
        let plain = dir.path().join("vmlinux-nopvh");
        fs::write(&plain, elf(b"GNU\0", 3)).unwrap();
        let error = kernel_image(&plain).unwrap_err().to_string();
        assert!(error.contains("without a PVH entry note"), "{error}");
        assert!(error.contains("CONFIG_PVH=y"), "{error}");
    }

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
    fn a_vmlinux_is_read_once_and_its_facts_remembered_between_runs() {
        let dir = tempfile::tempdir().unwrap();
        let key: FileKey = (dir.path().join("vmlinux"), 41_783_296, 1_700_000_000, 5);
        let file = facts_file(dir.path(), &key);
        assert_eq!(read_facts(&file), None);
        write_facts(&file, &(KernelImage::PvhElf, "6.1.192-provium".to_string()));
        assert_eq!(
            read_facts(&file),
            Some((KernelImage::PvhElf, "6.1.192-provium".to_string()))
        );
        // Another version of the file (rebuilt: new size or time) is another entry.
        let rebuilt: FileKey = (key.0.clone(), key.1, key.2, key.3 + 1);
        assert_ne!(facts_file(dir.path(), &rebuilt), file);
        // Anything but the expected form is ignored (read again from the ELF).
        fs::write(&file, "garbage").unwrap();
        assert_eq!(read_facts(&file), None);
        fs::write(&file, "pvh \n").unwrap();
        assert_eq!(read_facts(&file), None);
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
        assert!(
            message.contains("neither an x86 bzImage nor a vmlinux ELF"),
            "{message}"
        );
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
