//! Which QEMU machine a VM boots on, and what that changes.
//!
//! - `pc` (i440fx): virtio devices on PCI, two UARTs (the console and the agent's
//!   fallback channel), SeaBIOS — or QEMU's `qboot` when it is installed, which boots
//!   a kernel directly with less firmware work.
//! - `microvm`: no PCI, no legacy devices; virtio devices on virtio-mmio, one UART,
//!   its own minimal firmware, and a PVH `vmlinux` booted directly. The fastest path
//!   (docs/kernels.md has the bare boot times), for kernels built for it: virtio-mmio
//!   and the virtio console built in (`provium kconfig` has both).
//!
//! A profile's `machine` key picks one; without it Provium takes `microvm` only when
//! it can tell the kernel supports it — a PVH `vmlinux` whose `.config` (found beside
//! it) has virtio-mmio, the virtio console and ACPI built in — and `pc` otherwise, so
//! a distribution kernel (Debian's cloud kernel hung on microvm in one of two bare
//! boots) stays on `pc`.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::kernel::{self, KernelError, KernelImage};

/// The profile key's value (defined with the configuration, which the VM layer reads).
pub use crate::config::Machine;

/// The machine and firmware a profile's VMs boot with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MachineSetup {
    pub machine: Machine,
    /// `-bios`: qboot on `pc` when installed; `None` is the machine's default.
    pub firmware: Option<PathBuf>,
    /// Why this machine, for the log.
    pub reason: String,
}

impl MachineSetup {
    /// `-machine …` and `-bios …`.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = vec!["-machine".to_string(), self.machine.name().to_string()];
        if let Some(firmware) = &self.firmware {
            args.extend(["-bios".to_string(), firmware.to_string_lossy().into_owned()]);
        }
        args
    }
}

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("profile '{profile}': {source}")]
    Kernel {
        profile: String,
        #[source]
        source: KernelError,
    },
    #[error("profile '{profile}': machine = \"microvm\" needs {missing} built in (=y), but {} has {found}; build the kernel with `provium kconfig`'s fragment, or use machine = \"pc\"", .config.display())]
    MicrovmUnsupported {
        profile: String,
        missing: &'static str,
        found: String,
        config: PathBuf,
    },
}

/// QEMU's qboot firmware, when the distribution installed it.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// What microvm needs built into the kernel: the agent's channel on virtio-mmio, and
/// ACPI (power-off ends QEMU through the GED device).
const MICROVM_NEEDS: [&str; 3] = ["CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_CONSOLE", "CONFIG_ACPI"];

/// Decides the machine for `kernel`: `requested` (the profile's `machine`), else the
/// fastest one the kernel is known to support.
pub fn choose(
    profile: &str,
    requested: Option<Machine>,
    kernel: &Path,
) -> Result<MachineSetup, MachineError> {
    let image = kernel::kernel_image(kernel).map_err(|source| MachineError::Kernel {
        profile: profile.to_string(),
        source,
    })?;
    let config = kernel_config(kernel);
    let qboot = Path::new(QBOOT).is_file().then(|| PathBuf::from(QBOOT));
    let pc = |reason: String| MachineSetup {
        machine: Machine::Pc,
        firmware: qboot.clone(),
        reason,
    };
    match requested {
        Some(Machine::Pc) => Ok(pc("the profile's machine".to_string())),
        Some(Machine::Microvm) => {
            if let Some((path, text)) = &config {
                if let Some((missing, found)) = first_missing(text) {
                    return Err(MachineError::MicrovmUnsupported {
                        profile: profile.to_string(),
                        missing,
                        found,
                        config: path.clone(),
                    });
                }
            }
            Ok(MachineSetup {
                machine: Machine::Microvm,
                firmware: None,
                reason: "the profile's machine".to_string(),
            })
        }
        None => match (image, &config) {
            (KernelImage::PvhElf, Some((path, text))) if first_missing(text).is_none() => {
                Ok(MachineSetup {
                    machine: Machine::Microvm,
                    firmware: None,
                    reason: format!(
                        "a PVH vmlinux whose {} has virtio-mmio, the virtio console and ACPI built in",
                        path.display()
                    ),
                })
            }
            (KernelImage::PvhElf, _) => Ok(pc(
                "a PVH vmlinux without a .config beside it saying microvm would work".to_string(),
            )),
            (KernelImage::BzImage, _) => Ok(pc("a bzImage".to_string())),
        },
    }
}

/// The first of [`MICROVM_NEEDS`] not `=y` in a `.config`, and what it says instead.
fn first_missing(config: &str) -> Option<(&'static str, String)> {
    MICROVM_NEEDS.iter().find_map(|option| {
        let set = config
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{option}=")).map(str::to_string));
        match set.as_deref() {
            Some("y") => None,
            Some(value) => Some((*option, format!("{option}={value}"))),
            None => Some((*option, format!("no {option}"))),
        }
    })
}

/// The `.config` of the build a kernel image came from: beside it (a `vmlinux` in a
/// build tree, `scripts/build-kernel`'s cache entry) or three levels up (a tree's
/// `arch/x86/boot/bzImage`).
pub fn kernel_config(kernel: &Path) -> Option<(PathBuf, String)> {
    let kernel = std::fs::canonicalize(kernel).unwrap_or_else(|_| kernel.to_path_buf());
    kernel
        .ancestors()
        .skip(1)
        .take(4)
        .map(|dir| dir.join(".config"))
        .find_map(|path| std::fs::read_to_string(&path).ok().map(|text| (path, text)))
}

/// `tsc_early_khz=…` for a microvm guest under TCG: microvm has neither an HPET nor an
/// ACPI PM timer, so when the kernel's quick PIT calibration of the TSC fails (on a
/// loaded host it often does) its clock stops and the boot hangs. Under TCG the
/// guest's TSC runs at the host's rate, which `/proc/cpuinfo` gives.
pub fn tsc_hint() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find_map(|line| {
        line.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    (mhz > 0.0).then(|| format!("tsc_early_khz={}", (mhz * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "CONFIG_PVH=y\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_ACPI=y\n";

    #[test]
    fn a_config_needs_mmio_console_and_acpi_built_in() {
        assert_eq!(first_missing(GOOD), None);
        assert_eq!(
            first_missing("CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_ACPI=y\n"),
            Some(("CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO=m".to_string()))
        );
        assert_eq!(
            first_missing("CONFIG_VIRTIO_MMIO=y\nCONFIG_ACPI=y\n"),
            Some((
                "CONFIG_VIRTIO_CONSOLE",
                "no CONFIG_VIRTIO_CONSOLE".to_string()
            ))
        );
    }

    #[test]
    fn a_bzimage_boots_on_pc_and_microvm_is_refused_for_a_modular_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&kernel, &image).unwrap();
        let setup = choose("p", None, &kernel).unwrap();
        assert_eq!(setup.machine, Machine::Pc);
        std::fs::write(dir.path().join(".config"), "CONFIG_VIRTIO_MMIO=m\n").unwrap();
        let error = choose("p", Some(Machine::Microvm), &kernel)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "profile 'p': machine = \"microvm\" needs CONFIG_VIRTIO_MMIO built in (=y), but "
            ),
            "{error}"
        );
        assert!(error.contains("has CONFIG_VIRTIO_MMIO=m"), "{error}");
        assert_eq!(
            choose("p", Some(Machine::Pc), &kernel).unwrap().machine,
            Machine::Pc
        );
    }

    #[test]
    fn devices_follow_the_machine() {
        assert_eq!(Machine::Pc.virtio("serial"), "virtio-serial-pci");
        assert_eq!(Machine::Microvm.virtio("blk"), "virtio-blk-device");
        assert!(Machine::Pc.has_fallback_uart());
        assert!(!Machine::Microvm.has_fallback_uart());
        assert!(tsc_hint().unwrap().starts_with("tsc_early_khz="));
    }
}
