//! The combined initrd a VM boots: the profile's initramfs, unchanged, followed by
//! the Provium shim (agent, init choice, modules) and, per VM, the injected files.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::shim::{self, InjectedFile, ShimError, ShimModule};
use crate::vm::kernel::{self, KernelError, ModulePlan};

/// What goes into a profile's base initrd.
pub struct BaseInputs<'a> {
    pub profile: &'a str,
    pub user_initrd: Option<&'a Path>,
    /// The init the agent chains to, or `none`.
    pub init: &'a str,
    pub modules: &'a ModulePlan,
    pub agent: &'a [u8],
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

/// Writes (once per run and inputs) `<run_dir>/initrd-<profile>-<key>.img`: the
/// user initramfs followed by the base shim. Returns its path.
pub fn prepare_base(run_dir: &Path, inputs: &BaseInputs) -> Result<PathBuf, InitrdError> {
    let mut hasher = DefaultHasher::new();
    inputs.profile.hash(&mut hasher);
    inputs.init.hash(&mut hasher);
    inputs.agent.hash(&mut hasher);
    if let Some(path) = inputs.user_initrd {
        path.hash(&mut hasher);
        if let Ok(meta) = fs::metadata(path) {
            (meta.len(), meta.mtime(), meta.mtime_nsec()).hash(&mut hasher);
        }
    }
    for module in &inputs.modules.modules {
        module.path.hash(&mut hasher);
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
    let target = run_dir.join(format!("initrd-{safe_name}-{:016x}.img", hasher.finish()));

    let lock = build_lock(&target);
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    if target.is_file() {
        return Ok(target);
    }
    let user = match inputs.user_initrd {
        Some(path) => shim::read_initrd(inputs.profile, path)?,
        None => Vec::new(),
    };
    let mut modules = Vec::with_capacity(inputs.modules.modules.len());
    for module in &inputs.modules.modules {
        let data = module.load().map_err(|source| InitrdError::Module {
            profile: inputs.profile.to_string(),
            source,
        })?;
        modules.push(ShimModule {
            name: module.name.clone(),
            data,
        });
    }
    let base = shim::base_shim(inputs.agent, inputs.init, &modules);
    let temp = target.with_extension("img.tmp");
    shim::write_concatenated(&temp, &[&user, &base])?;
    fs::rename(&temp, &target).map_err(|source| ShimError::Write {
        path: target.clone(),
        source,
    })?;
    Ok(target)
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

/// The module plan for a kernel release: the agent's virtio modules from
/// `/lib/modules/<release>`, when that directory exists.
pub fn agent_modules(profile: &str, release: &str) -> Result<ModulePlan, InitrdError> {
    let dir = Path::new("/lib/modules").join(release);
    kernel::resolve_modules(&dir, kernel::AGENT_MODULES).map_err(|source| InitrdError::Module {
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
            agent: b"AGENT",
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
        let modified = fs::metadata(&base).unwrap().modified().unwrap();
        assert_eq!(prepare_base(dir.path(), &inputs).unwrap(), base);
        assert_eq!(fs::metadata(&base).unwrap().modified().unwrap(), modified);

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
}
