//! VMs: QEMU launch, the agent client, acceleration, profiles and snapshots.
//!
//! [`Vm::start`] takes a lease from the pool and boots (or resumes) a guest whose agent
//! has answered the handshake; [`Vm::client`] drives the agent; [`Vm::shutdown`] and
//! [`Vm::kill`] end it, and dropping a `Vm` kills QEMU on every path. [`fleet`] keeps
//! the VMs of one test file and decides how each ends.

pub mod accel;
pub mod agent_bin;
pub mod boot;
pub mod cache;
pub mod client;
pub mod default_profile;
pub mod fleet;
pub mod gdb;
pub mod host;
pub mod initrd;
pub mod kernel;
pub mod link;
pub mod machine;
pub mod modules;
pub mod options;
pub mod qemu;
pub mod shell;
pub mod snapshot;

use std::any::Any;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::pool::{BootCost, FileSlot, PoolError};
use crate::shim::{InjectedFile, AGENT_PATH};
pub use boot::BootError;

/// The kernel config fragment for Provium guests (`provium kconfig`, built by
/// `scripts/build-kernel`; docs/kernels.md).
pub const KCONFIG_FRAGMENT: &str = include_str!("kconfig.fragment");
use boot::BootLimits;
pub use client::{AgentClient, ClientError, ExecOutput};
use link::Link;
use qemu::{DiskFormat, Drive, LaunchSpec, Qemu, QemuError};
use snapshot::{MigrationError, Origin, OwnedFile, Snapshot};

/// How long a booting guest's console may stay silent before the boot fails (SPEC §3's
/// 30 s boot timeout, measured as progress rather than wall time).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a boot may take however busily the guest prints.
pub const DEFAULT_BOOT_CEILING: Duration = Duration::from_secs(300);
/// How long `shutdown` waits for the guest to power off before killing QEMU.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The deadline of each agent operation (exec, file transfer, ...).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(600);
/// Console lines carried by boot errors and shown in failure reports.
pub const CONSOLE_TAIL_LINES: usize = 20;

/// What a VM holds until it is shut down, killed or dropped: its resources from the
/// pool (a [`crate::pool::Lease`]), or anything a caller wants released with the VM.
pub type Lease = Box<dyn Any + Send>;

/// What a VM boots: a profile as the configuration resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootProfile {
    pub name: String,
    /// A bzImage.
    pub kernel: PathBuf,
    /// The user's initramfs (cpio, optionally compressed); the shim is appended to it.
    pub initrd: Option<PathBuf>,
    /// A root disk image, attached read-only as the first virtio disk (`/dev/vda`).
    pub rootfs: Option<PathBuf>,
    /// What the agent chains to as PID 1, or `none` to stay PID 1 itself.
    pub init: String,
    /// Extra kernel command line.
    pub append: String,
    /// The kernel's modules (a build tree or an installed tree); `None`: the host's
    /// `/lib/modules/<release>` when it exists.
    pub modules: Option<PathBuf>,
    /// The profile's `machine`; `None`: Provium chooses ([`machine::choose`]).
    pub machine: Option<machine::Machine>,
}

impl BootProfile {
    /// The built-in `default` profile from its resolved parts.
    pub fn from_default(default: &default_profile::DefaultProfile) -> BootProfile {
        BootProfile {
            name: "default".to_string(),
            kernel: default.kernel.clone(),
            initrd: Some(default.initrd.clone()),
            rootfs: None,
            init: "none".to_string(),
            append: String::new(),
            modules: None,
            machine: None,
        }
    }
}

/// A disk a test attaches (`vm:boot{disks = ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
}

/// A NIC on one of the host's networks (`vm:boot{networks = …}`): how QEMU attaches
/// it, and what the agent configures in the guest before the test gets the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// QEMU's `-netdev` value; its `id=` names the netdev the device uses.
    pub netdev: String,
    pub netdev_id: String,
    /// `02:70:76:64:00:02`: how the agent finds the interface.
    pub mac: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
}

/// Everything `Vm::boot` needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The VM's name in errors (e.g. `kacs_boot.lua#1`).
    pub name: String,
    pub profile: BootProfile,
    /// The run directory (0700); the VM creates its own `vmN/` inside.
    pub run_dir: PathBuf,
    /// `qemu-system-x86_64` or a path to it.
    pub qemu: PathBuf,
    pub use_kvm: bool,
    pub memory_mib: u64,
    pub cpus: u32,
    pub files: Vec<InjectedFile>,
    pub disks: Vec<Disk>,
    /// Console silence after which a boot fails.
    pub boot_timeout: Duration,
    /// The most a boot may take in all.
    pub boot_ceiling: Duration,
    /// Start QEMU's gdb stub on this loopback port (and boot with `nokaslr`).
    pub gdb_port: Option<u16>,
    /// NICs on host networks, `eth0` first.
    pub nics: Vec<Nic>,
    /// Deadline for each agent operation (exec, file transfer, ...).
    pub op_timeout: Duration,
}

impl VmConfig {
    /// SPEC defaults: 512 MiB, 1 CPU, 30 s boot timeout, TCG.
    pub fn new(name: &str, profile: BootProfile, run_dir: &Path) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            profile,
            run_dir: run_dir.to_path_buf(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            use_kvm: false,
            memory_mib: 512,
            cpus: 1,
            files: Vec::new(),
            disks: Vec::new(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            boot_ceiling: DEFAULT_BOOT_CEILING,
            gdb_port: None,
            nics: Vec::new(),
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }
}

/// Which channel the agent answered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentChannel {
    VirtioSerial,
    /// The ttyS1 fallback (slow: about 0.17 MB/s host to guest and 0.3 MB/s back under
    /// TCG, paced by credits so the guest tty never overruns).
    Uart,
}

/// A failed operation on a booted VM (beyond what the agent client reports).
#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("VM {vm}: {op}: the VM is not running (it was shut down or killed)")]
    Stopped { vm: String, op: &'static str },
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("VM {vm}: snapshot to {path}: {source}")]
    Snapshot {
        vm: String,
        path: PathBuf,
        #[source]
        source: Box<MigrationError>,
    },
}

/// Why [`Vm::start`] did not produce a VM: the pool refused, or the boot failed.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Boot(#[from] Box<BootError>),
}

/// Where a VM [`Vm::start`]s from.
pub enum StartFrom<'a> {
    /// A cold boot of a profile.
    Boot(Box<VmConfig>),
    /// A fresh VM resumed from a fixture's snapshot.
    Resume {
        snapshot: &'a Snapshot,
        run_dir: &'a Path,
        name: &'a str,
    },
}

/// How `shutdown` ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off and QEMU exited by itself.
    PoweredOff,
    /// The guest did not power off within the grace period; QEMU was killed.
    Killed,
    /// The VM was already stopped.
    AlreadyStopped,
}

/// A booted VM. Dropping it kills QEMU and removes its sockets; the console log stays.
pub struct Vm {
    name: String,
    qemu: Qemu,
    client: AgentClient,
    channel: AgentChannel,
    lease: Option<Lease>,
    private_initrd: Option<PathBuf>,
    running: bool,
    /// What a snapshot of this VM must reproduce.
    origin: Origin,
}

/// What a profile's boots share, made on the host before any QEMU starts and cached
/// across runs: see [`prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The kernel's release (`uname -r` in the guest).
    pub release: String,
    /// The profile's initramfs with the agent and its virtio modules appended.
    pub base_initrd: PathBuf,
    /// The kernel's `lib/modules/<release>` tree, when it has modules here.
    pub modules_tree: Option<PathBuf>,
    /// The read-only disk of that tree, for a guest whose agent stays PID 1 (a
    /// profile's own init and root file system bring their own modules).
    pub modules_disk: Option<PathBuf>,
    /// The machine the profile's VMs boot on.
    pub machine: machine::MachineSetup,
}

/// Makes, or finds in the cache, everything the host prepares for a boot of
/// `profile`: the kernel's release, its modules tree (staged with `depmod` from a
/// build tree), the base initramfs and the modules disk. `provium prepare` runs it
/// alone; every boot runs it first (cheap once cached).
pub fn prepare(profile: &BootProfile) -> Result<Prepared, BootError> {
    // Files boot in parallel: one at a time builds what the cache lacks (the others
    // then find it), since the builders write temporaries named by the process.
    static PREPARING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PREPARING.lock().unwrap_or_else(|e| e.into_inner());
    let release = kernel::kernel_version(&profile.kernel).map_err(|source| BootError::Kernel {
        profile: profile.name.clone(),
        source,
    })?;
    let machine = machine::choose(&profile.name, profile.machine, &profile.kernel)?;
    let cache = default_profile::cache_dir();
    let modules_tree = modules::tree(&profile.name, profile.modules.as_deref(), &release, &cache)?;
    let agent_modules =
        initrd::agent_modules(&profile.name, modules_tree.as_deref(), machine.machine)?;
    let net_modules = initrd::net_modules(&profile.name, modules_tree.as_deref())?;
    // The agent stays PID 1 (`init = "none"`): the guest gets the kernel's modules,
    // a small tree in the initramfs, a large one on a disk.
    let offered = modules_tree.as_deref().filter(|_| profile.init == "none");
    let inline = offered
        .filter(|tree| modules::tree_size(tree).is_ok_and(|bytes| bytes <= modules::INLINE_MAX));
    let base_initrd = initrd::prepare_base(
        &cache.join("initrd"),
        &initrd::BaseInputs {
            profile: &profile.name,
            user_initrd: profile.initrd.as_deref(),
            init: &profile.init,
            modules: &agent_modules,
            net_modules: &net_modules,
            agent: agent_bin::AGENT,
            inline_modules: inline.map(|tree| (tree, release.as_str())),
        },
    )?;
    let modules_disk = match (offered, inline) {
        (Some(tree), None) => Some(modules::disk(&profile.name, tree, &cache)?),
        _ => None,
    };
    Ok(Prepared {
        release,
        base_initrd,
        modules_tree,
        modules_disk,
        machine,
    })
}

impl Vm {
    /// Takes a lease for the VM from the file's pool slot (waiting until it fits),
    /// boots or resumes it, and marks the lease booted. The VM holds the lease until
    /// it is shut down, killed or dropped; a failed boot returns it at once.
    pub fn start(slot: &FileSlot, from: StartFrom<'_>) -> Result<Vm, StartError> {
        let (name, memory_mib, cpus) = match &from {
            StartFrom::Boot(config) => (config.name.clone(), config.memory_mib, config.cpus),
            StartFrom::Resume { snapshot, name, .. } => {
                (name.to_string(), snapshot.memory_mib(), snapshot.cpus())
            }
        };
        let cost = match &from {
            StartFrom::Boot(config) => config.use_kvm,
            StartFrom::Resume { snapshot, .. } => snapshot.origin().launch.use_kvm,
        };
        let cost = if cost {
            BootCost::Accelerated
        } else {
            BootCost::Emulated
        };
        // The VM holds one reference until it stops; ours marks the boot done.
        let lease = Arc::new(slot.acquire(memory_mib, cpus, &format!("VM {name}"))?);
        // Held for the boot alone: the CPU-heavy part.
        let _booting = slot.pool().begin_boot(cost).map_err(|stop| {
            Box::new(BootError::Stopped {
                vm: name.clone(),
                reason: stop.to_string(),
            })
        })?;
        let held: Lease = Box::new(Arc::clone(&lease));
        let vm = match from {
            StartFrom::Boot(config) => Vm::boot(*config, Some(held)),
            StartFrom::Resume {
                snapshot,
                run_dir,
                name,
            } => Vm::resume(snapshot, run_dir, name, Some(held)),
        }
        .map_err(Box::new)?;
        lease.booted();
        Ok(vm)
    }

    /// Boots a VM and waits for its agent's handshake. `lease` (the pool's resource
    /// reservation) is held until shutdown, kill or drop; on a failed boot it is
    /// dropped before returning.
    pub fn boot(config: VmConfig, lease: Option<Lease>) -> Result<Vm, BootError> {
        let start = Instant::now();
        let profile = &config.profile;
        let prepared = prepare(profile)?;
        let dir = boot::vm_dir(&config.run_dir, &config.name)?;
        let mut files = config.files.clone();
        if !config.nics.is_empty() {
            // What the agent configures before the test gets the VM.
            let path = dir.join("net");
            let lines: String = config
                .nics
                .iter()
                .map(|n| format!("{} {}/{} {}\n", n.mac, n.address, n.prefix, n.mtu))
                .collect();
            fs::write(&path, lines).map_err(|source| BootError::Setup {
                vm: config.name.clone(),
                path: path.clone(),
                source,
            })?;
            files.push(InjectedFile {
                guest_path: crate::shim::NET_CONFIG_PATH.to_string(),
                host_path: path,
            });
        }
        let private_initrd = if files.is_empty() {
            None
        } else {
            let path = dir.join("initrd.img");
            initrd::with_files(&prepared.base_initrd, &files, &path)?;
            Some(path)
        };

        let mut drives = Vec::new();
        if let Some(rootfs) = &profile.rootfs {
            drives.push(Drive {
                serial: None,
                path: rootfs.clone(),
                format: DiskFormat::detect(rootfs),
                readonly: true,
            });
        }
        drives.extend(config.disks.iter().map(|d| Drive {
            serial: None,
            path: d.path.clone(),
            format: d.format,
            readonly: d.readonly,
        }));
        // The modules disk goes after the test's own, so /dev/vda stays theirs.
        let mut modules_flag = "";
        if let Some(disk) = &prepared.modules_disk {
            drives.push(Drive {
                path: disk.clone(),
                format: DiskFormat::Raw,
                readonly: true,
                serial: Some(modules::DISK_SERIAL.to_string()),
            });
            modules_flag = modules::DISK_FLAG;
        }
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
        // can miss its window and panic ("IO-APIC + timer doesn't work!"); seen in CI
        // with several VMs booting at once on 2 cores.
        // nokaslr with a gdb stub: the kernel's symbols are where vmlinux says.
        // microvm under TCG: the TSC rate, or a failed calibration hangs the boot.
        let tsc = match (prepared.machine.machine, config.use_kvm) {
            (machine::Machine::Microvm, false) => machine::tsc_hint().unwrap_or_default(),
            _ => String::new(),
        };
        let append = format!(
            "console=ttyS0 rdinit={AGENT_PATH} panic=-1 no_timer_check{} {tsc} {modules_flag} {}",
            if config.gdb_port.is_some() {
                " nokaslr"
            } else {
                ""
            },
            profile.append
        );
        let nic_model = prepared.machine.machine.virtio("net");
        let spec = LaunchSpec {
            vm: config.name.clone(),
            qemu: config.qemu.clone(),
            dir,
            kernel: profile.kernel.clone(),
            initrd: private_initrd.clone().unwrap_or(prepared.base_initrd),
            append: append.split_whitespace().collect::<Vec<_>>().join(" "),
            memory_mib: config.memory_mib,
            cpus: config.cpus,
            use_kvm: config.use_kvm,
            drives,
            resume: false,
            gdb_port: config.gdb_port,
            nics: config
                .nics
                .iter()
                .flat_map(|n| {
                    // No option ROM: the kernel is booted directly, and it costs time.
                    let rom = if nic_model.ends_with("-pci") {
                        ",romfile="
                    } else {
                        ""
                    };
                    [
                        "-netdev".to_string(),
                        n.netdev.clone(),
                        "-device".to_string(),
                        format!("{nic_model},netdev={},mac={}{rom}", n.netdev_id, n.mac),
                    ]
                })
                .collect(),
            machine: prepared.machine.clone(),
        };
        let limits = BootLimits {
            silence: config.boot_timeout,
            ceiling: config.boot_ceiling.saturating_sub(start.elapsed()),
        };
        let started = boot::start(&spec, None, limits);
        match started {
            Ok(started) => Ok(Vm::assemble(
                config.name,
                started,
                config.op_timeout,
                lease,
                private_initrd,
                Origin::new(spec, config.profile, config.boot_timeout),
            )),
            Err(error) => {
                if let Some(path) = private_initrd {
                    let _ = fs::remove_file(path);
                }
                Err(error)
            }
        }
    }

    /// Starts a fresh VM from `snapshot`: a new QEMU with the snapshot's exact
    /// arguments waiting for the stream (`-incoming defer`), the stream loaded, the
    /// guest continued, then a new agent connection on the new sockets. The guest's
    /// writable disks get a throwaway overlay, so VMs resumed from one snapshot are
    /// independent. `lease` is held as for [`Vm::boot`]. The whole resume has the
    /// snapshot's boot timeout as its deadline.
    pub fn resume(
        snapshot: &Snapshot,
        run_dir: &Path,
        name: &str,
        lease: Option<Lease>,
    ) -> Result<Vm, BootError> {
        let start = Instant::now();
        let origin = snapshot.origin();
        let mut launch = origin.launch.clone();
        launch.vm = name.to_string();
        launch.dir = boot::vm_dir(run_dir, name)?;
        launch.resume = true;
        // A resumed VM gets no stub of its snapshot's (another VM may hold the port).
        launch.gdb_port = None;
        let limits = BootLimits {
            silence: origin.boot_timeout,
            ceiling: DEFAULT_BOOT_CEILING.saturating_sub(start.elapsed()),
        };
        let started = boot::start(&launch, Some(snapshot.path()), limits)?;
        launch.resume = false;
        Ok(Vm::assemble(
            name.to_string(),
            started,
            snapshot.op_timeout(),
            lease,
            None,
            Origin {
                launch,
                profile: origin.profile.clone(),
                boot_timeout: origin.boot_timeout,
                initrd: origin.initrd.clone(),
            },
        ))
    }

    fn assemble(
        name: String,
        started: boot::Started,
        op_timeout: Duration,
        lease: Option<Lease>,
        private_initrd: Option<PathBuf>,
        origin: Origin,
    ) -> Vm {
        let boot::Started {
            qemu,
            link,
            channel,
        } = started;
        let client = AgentClient::main(link, &name, op_timeout, qemu.liveness());
        Vm {
            name,
            qemu,
            client,
            channel,
            lease,
            private_initrd,
            running: true,
            origin,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client of the agent's main channel: every guest operation goes through it.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The console log file (kept after the VM ends, for failure reports).
    pub fn console_log(&self) -> &Path {
        self.qemu.console_path()
    }

    /// The last `lines` console lines.
    pub fn console_tail(&self, lines: usize) -> String {
        self.qemu.console_tail(lines)
    }

    /// Where QEMU's gdb stub listens (`localhost:PORT`), when it was asked for.
    pub fn gdb_address(&self) -> Option<String> {
        self.origin
            .launch
            .gdb_port
            .map(|port| format!("localhost:{port}"))
    }

    /// The channel the agent answered on.
    pub fn channel(&self) -> AgentChannel {
        self.channel
    }

    /// The machine it runs on, and why that one.
    pub fn machine(&self) -> &machine::MachineSetup {
        &self.origin.launch.machine
    }

    /// The agent link, for raw protocol requests (benches, tests).
    pub fn link(&self) -> &Link {
        self.client.link()
    }

    /// The deadline each agent operation gets.
    pub fn op_timeout(&self) -> Duration {
        self.client.op_timeout()
    }

    /// The QMP session (connected on first use), e.g. for snapshots.
    pub fn qmp(&mut self, timeout: Duration) -> Result<&mut crate::qmp::Qmp, VmError> {
        self.check_running("qmp")?;
        Ok(self.qemu.qmp(timeout)?)
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The kernel panic line, once the guest's console showed one.
    pub fn panic_line(&self) -> Option<String> {
        self.qemu.panic_line()
    }

    /// The main client, when the VM still runs.
    fn running_client(&self, op: &'static str) -> Result<&AgentClient, VmError> {
        self.check_running(op)?;
        Ok(&self.client)
    }

    /// Runs `cmd` with `/bin/sh -c`; a non-zero exit is a result, not an error.
    pub fn exec(&self, cmd: &str) -> Result<ExecOutput, VmError> {
        Ok(self.running_client("exec")?.exec(cmd)?)
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        Ok(self.running_client("read_file")?.read_file(path)?)
    }

    /// Creates or truncates `path` (mode 0644) with `data` (at most 16 MiB).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), VmError> {
        Ok(self.running_client("write_file")?.write_file(path, data)?)
    }

    /// The kernel log; with `pattern` (a regular expression), only matching lines.
    pub fn dmesg(&self, pattern: Option<&str>) -> Result<String, VmError> {
        Ok(self.running_client("dmesg")?.dmesg(pattern)?)
    }

    /// Mounts proc, sysfs, securityfs and devtmpfs where missing (idempotent).
    pub fn mount_vfs(&self) -> Result<(), VmError> {
        Ok(self.running_client("mount_vfs")?.mount_vfs()?)
    }

    /// Asks the guest to power off, waits up to [`SHUTDOWN_GRACE`], then kills QEMU.
    /// Releases the lease either way.
    pub fn shutdown(&mut self) -> ShutdownOutcome {
        if !self.running {
            return ShutdownOutcome::AlreadyStopped;
        }
        let start = Instant::now();
        self.client.request_poweroff(SHUTDOWN_GRACE);
        let remaining = SHUTDOWN_GRACE.saturating_sub(start.elapsed());
        let outcome = if self.qemu.wait_exit(remaining).is_some() {
            ShutdownOutcome::PoweredOff
        } else {
            self.qemu.kill();
            ShutdownOutcome::Killed
        };
        self.stopped();
        outcome
    }

    /// Kills QEMU at once and releases the lease.
    pub fn kill(&mut self) {
        self.qemu.kill();
        self.stopped();
    }

    /// Saves this VM to `path` and ends it. The agent is quiesced first (it answers
    /// once it has stopped serving until the next `Hello`, so the saved guest is
    /// idle on its channel), then QEMU is stopped and migrated into the file. The
    /// VM is killed afterwards, and also when the snapshot fails: a quiesced,
    /// stopped guest is no use to anyone.
    pub fn snapshot(&mut self, path: &Path) -> Result<Snapshot, VmError> {
        self.check_running("snapshot")?;
        let start = Instant::now();
        let initrd = path.with_extension("initrd");
        let result = self
            .client
            .quiesce(snapshot::COMMAND_TIMEOUT)
            .map_err(VmError::from)
            .and_then(|()| {
                snapshot::save(
                    &mut self.qemu,
                    &self.origin.launch.initrd,
                    path,
                    &initrd,
                    start + snapshot::SNAPSHOT_TIMEOUT,
                )
                .map_err(|source| VmError::Snapshot {
                    vm: self.name.clone(),
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })
            });
        self.kill();
        let size = result?;
        let mut origin = self.origin.clone();
        origin.launch.initrd = initrd.clone();
        origin.initrd = Some(Arc::new(OwnedFile(initrd)));
        Ok(Snapshot::new(
            path.to_path_buf(),
            origin,
            self.client.op_timeout(),
            self.name.clone(),
            size,
            start.elapsed(),
        ))
    }

    fn stopped(&mut self) {
        self.running = false;
        self.lease = None;
        if let Some(path) = self.private_initrd.take() {
            let _ = fs::remove_file(path);
        }
    }

    fn check_running(&self, op: &'static str) -> Result<(), VmError> {
        if self.running {
            Ok(())
        } else {
            Err(VmError::Stopped {
                vm: self.name.clone(),
                op,
            })
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.qemu.kill();
        self.stopped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_handles_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Vm>();
        assert_send::<BootError>();
        assert_send::<VmError>();
    }
}
