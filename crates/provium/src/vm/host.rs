//! Per-run host facts every VM boot needs (the QEMU binary, the accelerator, the
//! built-in `default` profile), worked out once per run, and profile resolution.
//!
//! Generating the default profile's initramfs and probing KVM are slow and their
//! answer cannot change within a run, so the first boot pays and every later boot
//! (in any file) reuses the result, errors included.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

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
}

/// The QEMU binary and how it accelerates guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSetup {
    pub qemu: PathBuf,
    pub accel: Accel,
}

/// Where a run's notices go (the reporter prints them between results).
pub type Notify = Box<dyn Fn(String) + Send + Sync>;

/// Run-wide cache of [`QemuSetup`] and the resolved default profile.
pub struct HostCache {
    qemu: OnceLock<Result<QemuSetup, AccelError>>,
    default_profile: OnceLock<Result<BootProfile, Arc<DefaultProfileError>>>,
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
    /// other name is an error listing the known profiles.
    pub fn boot_profile(&self, config: &Config, name: &str) -> Result<BootProfile, ProfileError> {
        if let Some(profile) = config.get(name) {
            return Ok(from_config(profile));
        }
        if name == DEFAULT_PROFILE {
            return Ok(self.default_profile()?);
        }
        Err(config.unknown_profile(name, &[DEFAULT_PROFILE]).into())
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
        let error = cache.boot_profile(&config, "nope").unwrap_err().to_string();
        assert!(error.contains("unknown profile 'nope'"), "{error}");
        assert!(error.contains("default, minimal"), "{error}");
        assert!(check_profile_name(&config, "minimal").is_ok());
        assert!(check_profile_name(&config, "default").is_ok());
        assert!(check_profile_name(&config, "other").is_err());
        assert_eq!(
            cache.boot_profile(&config, "minimal").unwrap().kernel,
            PathBuf::from("/p/bzImage")
        );
    }
}
