//! What a boot can ask for (`vm:boot(opts)`): memory, CPUs, injected files, disks; the
//! defaults (SPEC §3) and the checks on their values, written once.

use std::path::PathBuf;

use super::client::check_guest_path;
use super::Disk;
use crate::shim::InjectedFile;

/// Guest memory when a boot does not say (SPEC §3).
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// vCPUs when a boot does not say.
pub const DEFAULT_CPUS: u32 = 1;
/// The option names `vm:boot` accepts, in the order errors list them.
pub const BOOT_OPTIONS: [&str; 8] = [
    "memory",
    "cpus",
    "files",
    "disks",
    "networks",
    "append",
    "boot_timeout",
    "gdb",
];

/// A boot's options after parsing; relative host paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub memory_mib: u64,
    pub cpus: u32,
    /// Sorted by guest path.
    pub files: Vec<InjectedFile>,
    pub disks: Vec<Disk>,
    /// Extra kernel command line for this boot, after the profile's.
    pub append: String,
    /// How long the console may stay silent before the boot fails.
    pub boot_timeout: std::time::Duration,
    /// Start QEMU's gdb stub (also asked for by `PROVIUM_GDB=1`).
    pub gdb: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            files: Vec::new(),
            disks: Vec::new(),
            append: String::new(),
            boot_timeout: super::DEFAULT_BOOT_TIMEOUT,
            gdb: false,
        }
    }
}

impl BootOptions {
    /// Checks the values (the types were checked by whoever parsed them); the error
    /// names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_mib == 0 {
            return Err("memory must be more than 0".to_string());
        }
        if self.cpus == 0 {
            return Err("cpus must be at least 1, not 0".to_string());
        }
        if self.boot_timeout.is_zero() {
            return Err("boot_timeout must be more than 0".to_string());
        }
        for file in &self.files {
            check_guest_path(&file.guest_path).map_err(|e| format!("files: {e}"))?;
        }
        Ok(())
    }

    /// Adds an injected file; `host_path` is already resolved.
    pub fn add_file(&mut self, guest_path: String, host_path: PathBuf) {
        self.files.push(InjectedFile {
            guest_path,
            host_path,
        });
        self.files.sort_by(|a, b| a.guest_path.cmp(&b.guest_path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_value_checks() {
        let mut options = BootOptions::default();
        assert_eq!((options.memory_mib, options.cpus), (512, 1));
        assert_eq!(options.validate(), Ok(()));
        options.add_file("/etc/b".into(), "/h/b".into());
        options.add_file("/etc/a".into(), "/h/a".into());
        assert_eq!(options.files[0].guest_path, "/etc/a");
        options.add_file("etc/x".into(), "/h/x".into());
        assert_eq!(
            options.validate(),
            Err("files: guest path 'etc/x' must be absolute".to_string())
        );
        let zero = BootOptions {
            memory_mib: 0,
            ..BootOptions::default()
        };
        assert_eq!(zero.validate(), Err("memory must be more than 0".into()));
    }
}
