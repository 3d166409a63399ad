//! Per-run host facts every VM boot needs (the QEMU binary, the accelerator, the
//! built-in `default` profile), worked out once per run, and profile resolution.
//!
//! Generating the default profile's initramfs and probing KVM are slow and their
//! answer cannot change within a run, so the first boot pays and every later boot
//! (in any file) reuses the result, errors included.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;

use crate::config::{Config, ConfigError, Profile};
use crate::vm::accel::{self, Accel, AccelError};
use crate::vm::default_profile::{self, DefaultProfileError};
use crate::vm::BootProfile;

/// The name of the built-in profile.
pub const DEFAULT_PROFILE: &str = "default";

/// What a guest runs as PID 1 when the profile does not say (SPEC §2).
pub const DEFAULT_INIT: &str = "/sbin/init";

/// Why a profile cannot be booted.
#[derive(Debug, Error)]
pub enum ProfileError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Default(#[from] Arc<DefaultProfileError>),
    #[error(transparent)]
    Build(#[from] Arc<BuildError>),
    #[error("profile '{profile}': kernel '{}' does not exist{}", .path.display(), if *.built { " after its build" } else { "" })]
    MissingKernel {
        profile: String,
        path: PathBuf,
        built: bool,
    },
}

/// A profile's `build` command failed; the error carries its log's tail.
#[derive(Debug, Error)]
#[error("profile '{profile}': build `{command}` {how} (log: {}){}", .log.display(), tail_suffix(.tail))]
pub struct BuildError {
    pub profile: String,
    pub command: String,
    pub how: String,
    pub log: PathBuf,
    pub tail: String,
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nlast lines of the build log:\n{}", tail.trim_end())
    }
}

/// Lines of a build log an error carries.
const BUILD_TAIL_LINES: usize = 20;

/// Runs `command` (a profile's `build`) with `sh -c` in `project_root`, its output
/// in `log`.
pub fn run_build(
    profile: &str,
    command: &str,
    project_root: &Path,
    log: &Path,
) -> Result<(), BuildError> {
    let failed = |how: String| BuildError {
        profile: profile.to_string(),
        command: command.to_string(),
        how,
        log: log.to_path_buf(),
        tail: crate::vm::qemu::console_tail(log, BUILD_TAIL_LINES),
    };
    if let Some(parent) = log.parent() {
        let _ = fs::create_dir_all(parent);
    }
    let out = fs::File::create(log).map_err(|e| failed(format!("cannot start: {e}")))?;
    let err = out
        .try_clone()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(project_root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("failed ({status})")))
    }
}

/// The QEMU binary and how it accelerates guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSetup {
    pub qemu: PathBuf,
    pub accel: Accel,
}

/// Where a run's notices go (the reporter prints them between results).
pub type Notify = Box<dyn Fn(String) + Send + Sync>;

/// One profile's build in a run: run by the first boot that needs it.
type BuildOnce = OnceLock<Result<(), Arc<BuildError>>>;

/// Run-wide cache of [`QemuSetup`], the resolved default profile, the generated
/// userland, and which profiles' `build` commands have run (once per run each).
pub struct HostCache {
    qemu: OnceLock<Result<QemuSetup, AccelError>>,
    default_profile: OnceLock<Result<BootProfile, Arc<DefaultProfileError>>>,
    userland: OnceLock<Result<PathBuf, Arc<DefaultProfileError>>>,
    builds: Mutex<HashMap<String, Arc<BuildOnce>>>,
    notify: Notify,
}

impl Default for HostCache {
    /// Notices go straight to stderr (no reporter: tests, benches).
    fn default() -> Self {
        HostCache::new(Box::new(|notice| eprintln!("{notice}")))
    }
}

impl std::fmt::Debug for HostCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCache")
            .field("qemu", &self.qemu)
            .field("default_profile", &self.default_profile)
            .finish()
    }
}

impl HostCache {
    pub fn new(notify: Notify) -> HostCache {
        HostCache {
            qemu: OnceLock::new(),
            default_profile: OnceLock::new(),
            userland: OnceLock::new(),
            builds: Mutex::new(HashMap::new()),
            notify,
        }
    }

    /// The QEMU binary and accelerator (the KVM probe runs on the first call, which
    /// sends the fallback notice when KVM was rejected).
    pub fn qemu(&self) -> Result<QemuSetup, AccelError> {
        self.qemu
            .get_or_init(|| {
                let qemu = accel::qemu_binary()?;
                let decision = accel::choose(&qemu)?;
                if let Some(reason) = &decision.kvm_unusable {
                    (self.notify)(accel::fallback_notice(reason));
                }
                Ok(QemuSetup {
                    qemu,
                    accel: decision.accel,
                })
            })
            .clone()
    }

    /// The built-in default profile (its initramfs generated on the first call).
    pub fn default_profile(&self) -> Result<BootProfile, Arc<DefaultProfileError>> {
        self.default_profile
            .get_or_init(|| {
                default_profile::resolve(&default_profile::cache_dir())
                    .map(|resolved| BootProfile::from_default(&resolved))
                    .map_err(Arc::new)
            })
            .clone()
    }

    /// The profile `name`: the configuration's, else the built-in `default`; any
    /// other name is an error listing the known profiles. A configured profile's
    /// `build` runs first (once per run, its log in `run_dir`); one without an
    /// `initrd` gets the generated busybox userland, and the agent as PID 1 unless it
    /// names an `init`.
    pub fn boot_profile(
        &self,
        config: &Config,
        name: &str,
        run_dir: &Path,
    ) -> Result<BootProfile, ProfileError> {
        if let Some(profile) = config.get(name) {
            if let Some(command) = &profile.build {
                self.build_once(profile, command, &config.root, run_dir)?;
            }
            let mut boot = from_config(profile);
            if !boot.kernel.is_file() {
                return Err(ProfileError::MissingKernel {
                    profile: profile.name.clone(),
                    path: boot.kernel,
                    built: profile.build.is_some(),
                });
            }
            if boot.initrd.is_none() {
                boot.initrd = Some(self.userland()?);
                if profile.init.is_none() {
                    boot.init = "none".to_string();
                }
            }
            return Ok(boot);
        }
        if name == DEFAULT_PROFILE {
            return Ok(self.default_profile()?);
        }
        Err(config.unknown_profile(name, &[DEFAULT_PROFILE]).into())
    }
}

impl HostCache {
    /// The generated busybox userland (shared by the default profile and every
    /// profile without an initrd).
    pub fn userland(&self) -> Result<PathBuf, Arc<DefaultProfileError>> {
        self.userland
            .get_or_init(|| {
                default_profile::userland(&default_profile::cache_dir()).map_err(Arc::new)
            })
            .clone()
    }

    /// Runs `profile`'s build once per run; every later call gets the first answer.
    fn build_once(
        &self,
        profile: &Profile,
        command: &str,
        project_root: &Path,
        run_dir: &Path,
    ) -> Result<(), Arc<BuildError>> {
        let slot = {
            let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(builds.entry(profile.name.clone()).or_default())
        };
        slot.get_or_init(|| {
            let log = run_dir.join(format!("build-{}.log", profile.name));
            (self.notify)(format!(
                "provium: building profile '{}': {command} (log: {})",
                profile.name,
                log.display()
            ));
            let result = run_build(&profile.name, command, project_root, &log);
            if result.is_ok() {
                let _ = fs::remove_file(&log);
            }
            result.map_err(Arc::new)
        })
        .clone()
    }
}

/// Checks that `name` can be booted without resolving it (cheap: for `create`).
pub fn check_profile_name(config: &Config, name: &str) -> Result<(), ConfigError> {
    if name == DEFAULT_PROFILE || config.get(name).is_some() {
        Ok(())
    } else {
        Err(config.unknown_profile(name, &[DEFAULT_PROFILE]))
    }
}

/// A `[profile.NAME]` table as the VM layer boots it.
pub fn from_config(profile: &Profile) -> BootProfile {
    BootProfile {
        name: profile.name.clone(),
        kernel: profile.kernel.clone(),
        initrd: profile.initrd.clone(),
        rootfs: profile.rootfs.clone(),
        init: profile
            .init
            .clone()
            .unwrap_or_else(|| DEFAULT_INIT.to_string()),
        append: profile.append.clone().unwrap_or_default(),
        modules: profile.modules.clone(),
        machine: profile.machine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config_with(profile: Profile) -> Config {
        Config {
            path: Some(PathBuf::from("/p/provium.toml")),
            root: PathBuf::from("/p"),
            profiles: BTreeMap::from([(profile.name.clone(), profile)]),
            run: Default::default(),
        }
    }

    fn minimal() -> Profile {
        Profile {
            name: "minimal".into(),
            kernel: "/p/bzImage".into(),
            initrd: Some("/p/root.cpio".into()),
            rootfs: None,
            init: None,
            append: None,
            modules: None,
            build: None,
            machine: None,
        }
    }

    #[test]
    fn configured_profiles_get_spec_defaults() {
        let boot = from_config(&minimal());
        assert_eq!(boot.init, "/sbin/init");
        assert_eq!(boot.append, "");
        assert_eq!(
            boot.initrd.as_deref(),
            Some(std::path::Path::new("/p/root.cpio"))
        );
        let mut custom = minimal();
        custom.init = Some("none".into());
        custom.append = Some("quiet".into());
        let boot = from_config(&custom);
        assert_eq!(
            (boot.init.as_str(), boot.append.as_str()),
            ("none", "quiet")
        );
    }

    #[test]
    fn unknown_names_list_the_known_profiles() {
        let config = config_with(minimal());
        let cache = HostCache::default();
        let error = cache
            .boot_profile(&config, "nope", Path::new("/r"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown profile 'nope'"), "{error}");
        assert!(error.contains("default, minimal"), "{error}");
        assert!(check_profile_name(&config, "minimal").is_ok());
        assert!(check_profile_name(&config, "default").is_ok());
        assert!(check_profile_name(&config, "other").is_err());
        let missing = cache
            .boot_profile(&config, "minimal", Path::new("/r"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            missing,
            "profile 'minimal': kernel '/p/bzImage' does not exist"
        );
    }
}
