//! The combined initrd a VM boots: the profile's initramfs, unchanged, followed by
//! the Provium shim (agent, init choice, modules) and, per VM, the injected files.
//!
//! The base image (initramfs + shim) is built once and kept in the cache directory,
//! named by a hash of its inputs (the agent's bytes, the init, the initramfs's and the
//! modules' paths, sizes and modification times), so later runs boot without
//! rebuilding it while nothing changed; the newest [`KEEP_BASES`] are kept.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::shim::{self, InjectedFile, ShimError, ShimModule};
use crate::vm::kernel::{self, KernelError, ModulePlan};

/// What goes into a profile's base initrd.
pub struct BaseInputs<'a> {
    pub profile: &'a str,
    pub user_initrd: Option<&'a Path>,
    /// The init the agent chains to, or `none`.
    pub init: &'a str,
    pub modules: &'a ModulePlan,
    /// Loaded only for a VM on a host network.
    pub net_modules: &'a ModulePlan,
    pub agent: &'a [u8],
    /// A small modules tree (and its release) carried in the initramfs at
    /// `/lib/modules/<release>` instead of on a disk ([`super::modules::INLINE_MAX`]).
    pub inline_modules: Option<(&'a Path, &'a str)>,
}

/// Errors preparing a boot's initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("profile '{profile}': {source}")]
    Module {
        profile: String,
        #[source]
        source: KernelError,
    },
}

/// Serialises builds of the same base image by parallel test files of one run.
fn build_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(
        locks
            .get_or_insert_with(HashMap::new)
            .entry(path.to_path_buf())
            .or_default(),
    )
}

/// Base images kept in the cache; older ones are removed as new ones are built.
pub const KEEP_BASES: usize = 8;

/// FNV-1a, 64 bits: stable across Rust releases, so a cache key survives an upgrade.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Fnv {
        for &byte in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// A file by what identifies its contents cheaply: path, size, modification time.
    fn file(&mut self, path: &Path) -> &mut Fnv {
        self.bytes(path.as_os_str().as_encoded_bytes());
        if let Ok(meta) = fs::metadata(path) {
            self.bytes(&meta.len().to_le_bytes())
                .bytes(&meta.mtime().to_le_bytes())
                .bytes(&meta.mtime_nsec().to_le_bytes());
        }
        self
    }
}

/// Returns `<cache>/initrd-<profile>-<key>.img`, the user initramfs followed by the
/// base shim, building it when no earlier run (or file) did.
pub fn prepare_base(cache: &Path, inputs: &BaseInputs) -> Result<PathBuf, InitrdError> {
    let mut hasher = Fnv::new();
    hasher.bytes(inputs.init.as_bytes()).bytes(inputs.agent);
    if let Some(path) = inputs.user_initrd {
        hasher.file(path);
    }
    hasher.bytes(b"modules");
    for module in &inputs.modules.modules {
        hasher.file(&module.path);
    }
    hasher.bytes(b"net");
    for module in &inputs.net_modules.modules {
        hasher.file(&module.path);
    }
    if let Some((tree, release)) = inputs.inline_modules {
        hasher.bytes(b"inline").bytes(release.as_bytes());
        hash_tree(&mut hasher, tree);
    }
    let safe_name: String = inputs
        .profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    fs::create_dir_all(cache).map_err(|source| ShimError::Write {
        path: cache.to_path_buf(),
        source,
    })?;
    let target = cache.join(format!("initrd-{safe_name}-{:016x}.img", hasher.0));

    let lock = build_lock(&target);
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    if target.is_file() {
        // Marks it recently used, for the cache's trimming.
        let _ = fs::File::options()
            .append(true)
            .open(&target)
            .and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(target);
    }
    let user = match inputs.user_initrd {
        Some(path) => shim::read_initrd(inputs.profile, path)?,
        None => Vec::new(),
    };
    let load = |plan: &ModulePlan| -> Result<Vec<ShimModule>, InitrdError> {
        plan.modules
            .iter()
            .map(|module| {
                let data = module.load().map_err(|source| InitrdError::Module {
                    profile: inputs.profile.to_string(),
                    source,
                })?;
                Ok(ShimModule {
                    name: module.name.clone(),
                    data,
                })
            })
            .collect()
    };
    let modules = load(inputs.modules)?;
    let net_modules = load(inputs.net_modules)?;
    let base = shim::base_shim(inputs.agent, inputs.init, &modules, &net_modules);
    let inline = match inputs.inline_modules {
        Some((tree, release)) => {
            inline_modules_cpio(tree, release).map_err(|source| ShimError::Write {
                path: tree.to_path_buf(),
                source,
            })?
        }
        None => Vec::new(),
    };
    // Another provium may build the same image at once: each writes its own temp file
    // and the rename makes one of them the image, whole.
    let temp = target.with_extension(format!("img.{}.tmp", std::process::id()));
    shim::write_concatenated(&temp, &[&user, &base, &inline])?;
    fs::rename(&temp, &target).map_err(|source| ShimError::Write {
        path: target.clone(),
        source,
    })?;
    trim_cache(cache, KEEP_BASES);
    Ok(target)
}

/// Every file of a modules tree by path, size and modification time (as [`Fnv::file`]).
fn hash_tree(hasher: &mut Fnv, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        hasher.file(&path);
        if path.is_dir() && !path.is_symlink() {
            hash_tree(hasher, &path);
        }
    }
}

/// A newc archive holding `tree` at `lib/modules/<release>/`.
fn inline_modules_cpio(tree: &Path, release: &str) -> std::io::Result<Vec<u8>> {
    use super::modules::InlineEntry;
    let root = format!("lib/modules/{release}");
    let mut cpio = shim::CpioWriter::new(Vec::new());
    cpio.dir(&root, 0o755)?;
    for entry in super::modules::inline_entries(tree)? {
        match entry {
            InlineEntry::Dir(path) => cpio.dir(&format!("{root}/{path}"), 0o755)?,
            InlineEntry::File(path, data) => cpio.file(&format!("{root}/{path}"), 0o644, &data)?,
            InlineEntry::Symlink(path, target) => {
                cpio.symlink(&format!("{root}/{path}"), &target)?
            }
        }
    }
    cpio.finish()
}

/// Removes all but the `keep` most recently used base images.
fn trim_cache(cache: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let mut images: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("initrd-") && name.ends_with(".img")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    images.sort_by_key(|i| std::cmp::Reverse(i.0));
    for (_, stale) in images.into_iter().skip(keep) {
        let _ = fs::remove_file(stale);
    }
}

/// Copies `base` to `dest` and appends the injected files. The base image ends on a
/// 4-byte boundary (the shim is padded), so the files archive is aligned too.
pub fn with_files(base: &Path, files: &[InjectedFile], dest: &Path) -> Result<(), InitrdError> {
    let write_err = |source| ShimError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let archive = shim::files_shim(files)?;
    fs::copy(base, dest).map_err(write_err)?;
    if let Some(archive) = archive {
        let mut out = fs::OpenOptions::new()
            .append(true)
            .open(dest)
            .map_err(write_err)?;
        out.write_all(&archive).map_err(write_err)?;
    }
    Ok(())
}

/// The module plan for a kernel: the agent's virtio modules from its modules tree
/// (`lib/modules/<release>`), when it has one.
pub fn agent_modules(
    profile: &str,
    tree: Option<&Path>,
    machine: super::machine::Machine,
) -> Result<ModulePlan, InitrdError> {
    match machine {
        super::machine::Machine::Pc | super::machine::Machine::Q35 => {
            modules_of(profile, tree, kernel::AGENT_MODULES)
        }
        // Its devices are on virtio-mmio.
        super::machine::Machine::Microvm => {
            let mut wanted = kernel::AGENT_MODULES.to_vec();
            wanted.push("virtio_mmio");
            modules_of(profile, tree, &wanted)
        }
    }
}

/// The NIC drivers (`virtio_net` and what it needs) from the kernel's modules tree,
/// for VMs on host networks; empty when they are built in or there is no tree.
pub fn net_modules(profile: &str, tree: Option<&Path>) -> Result<ModulePlan, InitrdError> {
    modules_of(profile, tree, kernel::NET_MODULES)
}

fn modules_of(
    profile: &str,
    tree: Option<&Path>,
    wanted: &[&str],
) -> Result<ModulePlan, InitrdError> {
    let Some(tree) = tree else {
        return Ok(ModulePlan::default());
    };
    kernel::resolve_modules(tree, wanted).map_err(|source| InitrdError::Module {
        profile: profile.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::tests::parse;

    #[test]
    fn base_is_user_initrd_then_shim_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.cpio.gz");
        fs::write(&user, b"\x1f\x8b\x08\x00fake-gzip").unwrap();
        let plan = ModulePlan::default();
        let inputs = BaseInputs {
            profile: "my profile",
            user_initrd: Some(&user),
            init: "/sbin/init",
            modules: &plan,
            net_modules: &plan,
            agent: b"AGENT",
            inline_modules: None,
        };
        let base = prepare_base(dir.path(), &inputs).unwrap();
        assert!(base
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("initrd-my_profile-"));
        let bytes = fs::read(&base).unwrap();
        assert_eq!(&bytes[..13], b"\x1f\x8b\x08\x00fake-gzip");
        assert_eq!(&bytes[13..16], [0, 0, 0]);
        let entries = parse(&bytes[16..]);
        assert!(entries
            .iter()
            .any(|e| e.name == ".provium/agent" && e.data == b"AGENT"));
        // Reused, not rebuilt: the same file (inode), by a later run too.
        let inode = fs::metadata(&base).unwrap().ino();
        assert_eq!(prepare_base(dir.path(), &inputs).unwrap(), base);
        assert_eq!(fs::metadata(&base).unwrap().ino(), inode);

        let payload = dir.path().join("payload");
        fs::write(&payload, b"data").unwrap();
        let dest = dir.path().join("vm.img");
        let files = [InjectedFile {
            guest_path: "/etc/payload".into(),
            host_path: payload,
        }];
        with_files(&base, &files, &dest).unwrap();
        let combined = fs::read(&dest).unwrap();
        assert_eq!(&combined[..bytes.len()], &bytes[..]);
        let extra = parse(&combined[bytes.len()..]);
        assert_eq!(extra.last().unwrap().name, "etc/payload");
    }

    #[test]
    fn a_small_modules_tree_rides_in_the_initramfs_and_keys_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("kernel/drivers/block")).unwrap();
        fs::write(tree.join("modules.dep"), b"kernel/drivers/block/loop.ko:\n").unwrap();
        fs::write(tree.join("kernel/drivers/block/loop.ko"), b"\x7fELF loop").unwrap();
        std::os::unix::fs::symlink("/usr/src/linux", tree.join("build")).unwrap();
        let cpio = inline_modules_cpio(&tree, "6.1.192-provium").unwrap();
        let entries = parse(&cpio);
        let root = "lib/modules/6.1.192-provium";
        let find = |name: &str| entries.iter().find(|e| e.name == name);
        assert_eq!(
            find(&format!("{root}/kernel/drivers/block/loop.ko"))
                .unwrap()
                .data,
            b"\x7fELF loop"
        );
        assert_eq!(
            find(&format!("{root}/modules.dep")).unwrap().data,
            b"kernel/drivers/block/loop.ko:\n"
        );
        assert_eq!(
            find(&format!("{root}/build")).unwrap().data,
            b"/usr/src/linux"
        );

        let cache = dir.path().join("cache");
        let plan = ModulePlan::default();
        let inputs = |inline| BaseInputs {
            profile: "p",
            user_initrd: None,
            init: "none",
            modules: &plan,
            net_modules: &plan,
            agent: b"AGENT",
            inline_modules: inline,
        };
        let without = prepare_base(&cache, &inputs(None)).unwrap();
        let with = prepare_base(&cache, &inputs(Some((&tree, "6.1.192-provium")))).unwrap();
        assert_ne!(with, without);
        let image = fs::read(&with).unwrap();
        assert!(image.ends_with(&cpio), "the tree's archive ends the image");
        // A rebuilt module is another image.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(
            tree.join("kernel/drivers/block/loop.ko"),
            b"\x7fELF loop v2",
        )
        .unwrap();
        let rebuilt = prepare_base(&cache, &inputs(Some((&tree, "6.1.192-provium")))).unwrap();
        assert_ne!(rebuilt, with);
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_images() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ModulePlan::default();
        let mut built = Vec::new();
        for i in 0..(KEEP_BASES + 3) {
            let init = format!("/init{i}");
            let inputs = BaseInputs {
                profile: "p",
                user_initrd: None,
                init: &init,
                modules: &plan,
                net_modules: &plan,
                agent: b"AGENT",
                inline_modules: None,
            };
            built.push(prepare_base(dir.path(), &inputs).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let left = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, KEEP_BASES);
        assert!(!built[0].exists(), "the oldest image was trimmed");
        assert!(built.last().unwrap().exists());
    }
}
