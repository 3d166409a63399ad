//! Which QEMU machine a VM boots on, and what that changes.
//!
//! - `pc` (i440fx): virtio devices on PCI, two UARTs (the console and the agent's
//!   fallback channel), SeaBIOS — or QEMU's `qboot` when it is installed, which boots
//!   a kernel directly with less firmware work.
//! - `q35` (ICH9): virtio devices on PCI Express, two UARTs, the same firmware as
//!   `pc`. The kernel finds each PCI device's interrupt in a static ACPI table,
//!   where on `pc` the firmware's `_PRT` method builds its table in a 128-step AML
//!   loop for every device it is asked about: about 90 ms per virtio device under
//!   TCG, most of what a distribution kernel's boot spent after its init started.
//! - `microvm`: no PCI, no legacy devices; virtio devices on virtio-mmio, one UART,
//!   its own minimal firmware, and a PVH `vmlinux` booted directly. The fastest path
//!   (docs/kernels.md has the bare boot times), for kernels built for it: virtio-mmio
//!   and the virtio console built in (`provium kconfig` has both).
//!
//! A profile's `machine` key picks one; without it Provium takes the fastest one it
//! can tell the kernel supports, from its `.config` (beside it, or a distribution's
//! `/boot/config-<release>`): `microvm` for a PVH `vmlinux` with virtio-mmio, the
//! virtio console and ACPI built in; `q35` for a kernel with ACPI and PCI built in
//! (Debian's cloud kernel: it hung on microvm in one of two bare boots, so it never
//! gets microvm unasked); `pc` when no `.config` says more.

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
    #[error("profile '{profile}': machine = \"{}\" needs {missing} built in (=y), but {} has {found}; build the kernel with `provium kconfig`'s fragment, or use machine = \"pc\"", .machine.name(), .config.display())]
    Unsupported {
        profile: String,
        machine: Machine,
        missing: &'static str,
        found: String,
        config: PathBuf,
    },
}

/// QEMU's qboot firmware, when the distribution installed it.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// What microvm needs built into the kernel: the agent's channel on virtio-mmio, and
/// ACPI (power-off ends QEMU through the GED device).
const MICROVM_NEEDS: &[&str] = &["CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_CONSOLE", "CONFIG_ACPI"];

/// What q35 needs built into the kernel: PCI, and ACPI, which routes q35's PCI
/// interrupts (it has no BIOS routing table for a kernel without ACPI) and powers
/// it off.
const Q35_NEEDS: &[&str] = &["CONFIG_PCI", "CONFIG_ACPI"];

/// What a machine needs built into the kernel, as far as a `.config` can tell.
fn needs(machine: Machine) -> &'static [&'static str] {
    match machine {
        Machine::Pc => &[],
        Machine::Q35 => Q35_NEEDS,
        Machine::Microvm => MICROVM_NEEDS,
    }
}

/// Decides the machine for `kernel`: `requested` (the profile's `machine`), else the
/// fastest one the kernel is known to support: `microvm` for a PVH `vmlinux` built
/// for it, `q35` for a kernel whose `.config` has ACPI and PCI built in (on `pc`,
/// ACPI finds each PCI device's interrupt by running the firmware's 128-step `_PRT`
/// loop, ~90 ms per virtio device under TCG; q35's table is static), `pc` when
/// nothing says more.
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
    let setup = |machine: Machine, reason: String| MachineSetup {
        machine,
        // qboot boots pc and q35 alike; microvm has its own firmware.
        firmware: (machine != Machine::Microvm && Path::new(QBOOT).is_file())
            .then(|| PathBuf::from(QBOOT)),
        reason,
    };
    let supports = |machine: Machine| {
        config
            .as_ref()
            .is_some_and(|(_, text)| first_missing(text, needs(machine)).is_none())
    };
    let config_path = config
        .as_ref()
        .map(|(path, _)| path.display().to_string())
        .unwrap_or_default();
    if let Some(machine) = requested {
        if let Some((path, text)) = &config {
            if let Some((missing, found)) = first_missing(text, needs(machine)) {
                return Err(MachineError::Unsupported {
                    profile: profile.to_string(),
                    machine,
                    missing,
                    found,
                    config: path.clone(),
                });
            }
        }
        return Ok(setup(machine, "the profile's machine".to_string()));
    }
    Ok(match image {
        KernelImage::PvhElf if supports(Machine::Microvm) => setup(
            Machine::Microvm,
            format!("a PVH vmlinux whose {config_path} has virtio-mmio, the virtio console and ACPI built in"),
        ),
        _ if supports(Machine::Q35) => setup(
            Machine::Q35,
            format!("a kernel whose {config_path} has ACPI and PCI built in"),
        ),
        KernelImage::PvhElf => setup(
            Machine::Pc,
            "a PVH vmlinux without a .config saying microvm or q35 would work".to_string(),
        ),
        KernelImage::BzImage => setup(
            Machine::Pc,
            "a bzImage without a .config saying q35 would work".to_string(),
        ),
    })
}

/// The first of `needs` not `=y` in a `.config`, and what it says instead.
fn first_missing(config: &str, needs: &[&'static str]) -> Option<(&'static str, String)> {
    needs.iter().find_map(|option| {
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
/// build tree, `scripts/build-kernel`'s cache entry), three levels up (a tree's
/// `arch/x86/boot/bzImage`), or a distribution's `/boot/config-<release>` beside its
/// `/boot/vmlinuz-<release>`.
pub fn kernel_config(kernel: &Path) -> Option<(PathBuf, String)> {
    let kernel = std::fs::canonicalize(kernel).unwrap_or_else(|_| kernel.to_path_buf());
    let installed = kernel.file_name().and_then(|name| {
        let name = name.to_str()?;
        let release = name
            .strip_prefix("vmlinuz-")
            .or_else(|| name.strip_prefix("vmlinux-"))?;
        Some(kernel.with_file_name(format!("config-{release}")))
    });
    kernel
        .ancestors()
        .skip(1)
        .take(4)
        .map(|dir| dir.join(".config"))
        .chain(installed)
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
        assert_eq!(first_missing(GOOD, MICROVM_NEEDS), None);
        assert_eq!(
            first_missing(
                "CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_ACPI=y\n",
                MICROVM_NEEDS
            ),
            Some(("CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO=m".to_string()))
        );
        assert_eq!(
            first_missing("CONFIG_VIRTIO_MMIO=y\nCONFIG_ACPI=y\n", MICROVM_NEEDS),
            Some((
                "CONFIG_VIRTIO_CONSOLE",
                "no CONFIG_VIRTIO_CONSOLE".to_string()
            ))
        );
    }

    /// The smallest file `kernel_image` takes for a bzImage: the `HdrS` magic.
    fn fake_bzimage(dir: &Path, name: &str) -> PathBuf {
        let kernel = dir.join(name);
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&kernel, &image).unwrap();
        kernel
    }

    #[test]
    fn a_bzimage_boots_on_pc_and_microvm_is_refused_for_a_modular_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_bzimage(dir.path(), "bzImage");
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
        // The same .config refuses q35 too: it says nothing of ACPI.
        let error = choose("p", Some(Machine::Q35), &kernel)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("profile 'p': machine = \"q35\" needs CONFIG_PCI built in (=y)"),
            "{error}"
        );
    }

    #[test]
    fn a_kernel_with_acpi_and_pci_boots_on_q35_unless_microvm_fits() {
        let dir = tempfile::tempdir().unwrap();
        // A distribution's layout: /boot/vmlinuz-R beside /boot/config-R.
        let kernel = fake_bzimage(dir.path(), "vmlinuz-6.1.0-test");
        std::fs::write(
            dir.path().join("config-6.1.0-test"),
            "CONFIG_PCI=y\nCONFIG_ACPI=y\nCONFIG_VIRTIO_PCI=m\n",
        )
        .unwrap();
        let setup = choose("p", None, &kernel).unwrap();
        assert_eq!(setup.machine, Machine::Q35);
        assert!(
            setup.reason.contains("config-6.1.0-test"),
            "{}",
            setup.reason
        );
        assert_eq!(
            choose("p", Some(Machine::Pc), &kernel).unwrap().machine,
            Machine::Pc
        );
        // Without ACPI, q35 would have no interrupt routing: pc.
        std::fs::write(dir.path().join("config-6.1.0-test"), "CONFIG_PCI=y\n").unwrap();
        assert_eq!(choose("p", None, &kernel).unwrap().machine, Machine::Pc);
    }

    #[test]
    fn devices_follow_the_machine() {
        assert_eq!(Machine::Pc.virtio("serial"), "virtio-serial-pci");
        assert_eq!(Machine::Microvm.virtio("blk"), "virtio-blk-device");
        assert!(Machine::Pc.has_fallback_uart());
        assert_eq!(Machine::Q35.virtio("net"), "virtio-net-pci");
        assert!(Machine::Q35.has_fallback_uart());
        assert!(!Machine::Microvm.has_fallback_uart());
        assert!(tsc_hint().unwrap().starts_with("tsc_early_khz="));
    }
}
