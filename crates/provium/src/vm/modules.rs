//! The kernel's modules: where a profile's are (its `modules` key — a kernel build
//! tree or an `INSTALL_MOD_PATH` tree — else `/lib/modules/<release>`), and how the
//! guest gets all of them: a read-only ext4 image of the `lib/modules/<release>`
//! tree, built once per tree and cached, attached as a virtio disk the agent mounts on
//! `/lib/modules/<release>` — so `modprobe loop` works — without copying 90 MB of
//! modules into every guest's RAM as an initramfs would (docs/kernels.md has the
//! measurements).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// The serial the modules disk carries, which the agent looks for.
pub const DISK_SERIAL: &str = "provium-modules";
/// On the kernel command line when the modules disk is attached.
pub const DISK_FLAG: &str = "provium.modules=disk";

#[derive(Debug, Error)]
pub enum ModulesError {
    #[error("profile '{profile}': modules '{}' holds no modules for kernel {release}: looked for {} (a kernel build tree) and {} (an INSTALL_MOD_PATH tree)", .path.display(), .path.join("modules.order").display(), .path.join("lib/modules").join(.release).join("modules.dep").display())]
    NotModules {
        profile: String,
        path: PathBuf,
        release: String,
    },
    #[error("profile '{profile}': cannot prepare the modules of {}: {action}: {reason}", .path.display())]
    Prepare {
        profile: String,
        path: PathBuf,
        action: String,
        reason: String,
    },
}

/// The `lib/modules/<release>` directory of a profile's kernel: `key` (the profile's
/// `modules`) when given, staged with `depmod` when it is a build tree; otherwise the
/// host's `/lib/modules/<release>` when it exists. `None`: the kernel has no modules
/// here (its drivers may all be built in).
pub fn tree(
    profile: &str,
    key: Option<&Path>,
    release: &str,
    cache: &Path,
) -> Result<Option<PathBuf>, ModulesError> {
    let Some(dir) = key else {
        let host = Path::new("/lib/modules").join(release);
        return Ok(host.is_dir().then_some(host));
    };
    let installed = dir.join("lib/modules").join(release);
    if installed.join("modules.dep").is_file() {
        return Ok(Some(installed));
    }
    if dir.join("modules.dep").is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    if dir.join("modules.order").is_file() {
        return stage(profile, dir, release, cache).map(Some);
    }
    Err(ModulesError::NotModules {
        profile: profile.to_string(),
        path: dir.to_path_buf(),
        release: release.to_string(),
    })
}

/// A stable key for a tree's state: its path and its index's size and time.
fn key_of(path: &Path, index: &Path) -> String {
    let meta = fs::metadata(index).ok();
    let stamp = meta
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec())
        })
        .unwrap_or_default();
    let text = format!("{}\0{stamp}", path.display());
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn run(
    profile: &str,
    path: &Path,
    action: &str,
    command: &mut Command,
) -> Result<(), ModulesError> {
    let failed = |reason: String| ModulesError::Prepare {
        profile: profile.to_string(),
        path: path.to_path_buf(),
        action: action.to_string(),
        reason,
    };
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run it ({e})")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Stages a kernel build tree's modules (those `modules.order` lists) as an
/// installed tree in the cache, indexed by the host's `depmod`.
fn stage(
    profile: &str,
    build: &Path,
    release: &str,
    cache: &Path,
) -> Result<PathBuf, ModulesError> {
    let order = build.join("modules.order");
    let root = cache
        .join("modules")
        .join(format!("stage-{release}-{}", key_of(build, &order)));
    let tree = root.join("lib/modules").join(release);
    if tree.join("modules.dep").is_file() {
        return Ok(tree);
    }
    let io_failed = |action: &str| {
        let action = action.to_string();
        move |e: io::Error| ModulesError::Prepare {
            profile: profile.to_string(),
            path: build.to_path_buf(),
            action,
            reason: e.to_string(),
        }
    };
    let temp = root.with_extension(format!("{}.tmp", std::process::id()));
    let staged = temp.join("lib/modules").join(release);
    fs::create_dir_all(&staged).map_err(io_failed("create the staging tree"))?;
    let listed = fs::read_to_string(&order).map_err(io_failed("read modules.order"))?;
    let mut installed_order = String::new();
    for line in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Kernels list `dir/mod.ko` (6.1) or `dir/mod.o` (6.2 and later).
        let module = line
            .strip_suffix(".o")
            .map_or(line.to_string(), |s| format!("{s}.ko"));
        let target = staged.join("kernel").join(&module);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_failed("create a module directory"))?;
        }
        fs::copy(build.join(&module), &target).map_err(io_failed(&format!("copy {module}")))?;
        installed_order.push_str(&format!("kernel/{module}\n"));
    }
    fs::write(staged.join("modules.order"), installed_order)
        .map_err(io_failed("write modules.order"))?;
    for index in ["modules.builtin", "modules.builtin.modinfo"] {
        if build.join(index).is_file() {
            fs::copy(build.join(index), staged.join(index))
                .map_err(io_failed(&format!("copy {index}")))?;
        }
    }
    run(
        profile,
        build,
        "depmod",
        Command::new("depmod").arg("-b").arg(&temp).arg(release),
    )?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&temp, &root).map_err(io_failed("move the staging tree in place"))?;
    Ok(tree)
}

/// A read-only ext4 image of `tree` (a `lib/modules/<release>` directory), built once
/// and cached (`v2`: without a journal).
pub fn disk(profile: &str, tree: &Path, cache: &Path) -> Result<PathBuf, ModulesError> {
    let dir = cache.join("modules");
    let image = dir.join(format!(
        "disk-v2-{}.img",
        key_of(tree, &tree.join("modules.dep"))
    ));
    if image.is_file() {
        return Ok(image);
    }
    let io_failed = |action: &'static str| {
        move |e: io::Error| ModulesError::Prepare {
            profile: profile.to_string(),
            path: tree.to_path_buf(),
            action: action.to_string(),
            reason: e.to_string(),
        }
    };
    fs::create_dir_all(&dir).map_err(io_failed("create the cache"))?;
    let bytes = tree_size(tree).map_err(io_failed("measure the tree"))?;
    // Room for ext4's own metadata and the inodes of ~1,000 files, and some slack.
    let kib = bytes / 1024 * 5 / 4 + 16 * 1024;
    let temp = image.with_extension(format!("{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    run(
        profile,
        tree,
        "mke2fs",
        Command::new("mke2fs")
            .args([
                "-q",
                "-t",
                "ext4",
                // Read-only: no journal to find and check at every mount.
                "-O",
                "^has_journal",
                "-L",
                DISK_SERIAL,
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(tree)
            .arg(&temp)
            .arg(format!("{kib}k")),
    )?;
    fs::rename(&temp, &image).map_err(io_failed("move the image in place"))?;
    Ok(image)
}

/// A modules tree up to this size goes into the base initramfs instead of a disk:
/// measured on the kernel of `scripts/build-kernel` (one module, 232 KB), mounting
/// the disk cost ~45 ms of a 0.7 s boot, while the tree in the initramfs costs the
/// guest its size in RAM and nothing measurable to unpack. Debian's cloud kernel
/// (92 MB of modules) stays on the disk.
pub const INLINE_MAX: u64 = 8 * 1024 * 1024;

/// Every file of a modules `tree`, as (path inside the tree, contents, mode) and the
/// symlinks as (path, target), for the initramfs under `lib/modules/<release>/`.
pub fn inline_entries(tree: &Path) -> io::Result<Vec<InlineEntry>> {
    let mut entries = Vec::new();
    collect(tree, Path::new(""), &mut entries)?;
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(entries)
}

/// One entry of a modules tree carried in the initramfs.
#[derive(Debug, PartialEq, Eq)]
pub enum InlineEntry {
    Dir(String),
    File(String, Vec<u8>),
    Symlink(String, String),
}

impl InlineEntry {
    fn path(&self) -> &str {
        match self {
            InlineEntry::Dir(p) | InlineEntry::File(p, _) | InlineEntry::Symlink(p, _) => p,
        }
    }
}

fn collect(dir: &Path, rel: &Path, out: &mut Vec<InlineEntry>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let name = rel_path.to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            out.push(InlineEntry::Dir(name));
            collect(&entry.path(), &rel_path, out)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(entry.path())?;
            out.push(InlineEntry::Symlink(
                name,
                target.to_string_lossy().into_owned(),
            ));
        } else {
            out.push(InlineEntry::File(name, fs::read(entry.path())?));
        }
    }
    Ok(())
}

/// The bytes of the files under `dir` (symlinks count as their own size).
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_found_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let installed = dir.path().join("mods/lib/modules/6.1.0-x");
        fs::create_dir_all(&installed).unwrap();
        fs::write(installed.join("modules.dep"), "").unwrap();
        assert_eq!(
            tree("p", Some(&dir.path().join("mods")), "6.1.0-x", &cache).unwrap(),
            Some(installed.clone())
        );
        assert_eq!(
            tree("p", Some(&installed), "6.1.0-x", &cache).unwrap(),
            Some(installed)
        );
        let error = tree("p", Some(dir.path()), "6.1.0-x", &cache)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "profile 'p': modules '{}' holds no modules for kernel 6.1.0-x: looked for",
                dir.path().display()
            )),
            "{error}"
        );
        assert_eq!(tree("p", None, "no-such-release", &cache).unwrap(), None);
    }

    #[test]
    fn a_build_tree_is_staged_with_depmod_and_made_a_disk() {
        if Command::new("depmod").arg("--version").output().is_err() {
            panic!("depmod (package kmod) is needed to stage a build tree's modules");
        }
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("linux");
        fs::create_dir_all(build.join("drivers/block")).unwrap();
        // Not a real module: depmod indexes it all the same (no symbols, no deps).
        fs::write(build.join("drivers/block/loop.ko"), b"\x7fELF").unwrap();
        fs::write(build.join("modules.order"), "drivers/block/loop.o\n").unwrap();
        let cache = dir.path().join("cache");
        let staged = tree("p", Some(&build), "6.1.0-t", &cache).unwrap().unwrap();
        assert!(staged.join("kernel/drivers/block/loop.ko").is_file());
        let dep = fs::read_to_string(staged.join("modules.dep")).unwrap();
        assert!(dep.contains("kernel/drivers/block/loop.ko:"), "{dep}");
        let image = disk("p", &staged, &cache).unwrap();
        assert!(fs::metadata(&image).unwrap().len() > 0);
        assert_eq!(disk("p", &staged, &cache).unwrap(), image, "cached");
    }
}
