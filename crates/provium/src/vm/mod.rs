//! VM handles: QEMU launch, the agent link, acceleration and the default profile.
//!
//! [`Vm::boot`] turns a profile into a running guest whose agent has answered the
//! handshake; the methods drive the agent; [`Vm::shutdown`] and [`Vm::kill`] end it,
//! and dropping a `Vm` kills QEMU on every path.

pub mod accel;
pub mod agent_bin;
pub mod default_profile;
pub mod host;
pub mod initrd;
pub mod kernel;
pub mod link;
pub mod qemu;
pub mod snapshot;

use std::any::Any;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use provium_proto::{Request, Response, MAIN_CHANNEL, MAX_DATA};
use thiserror::Error;

use crate::shim::{InjectedFile, AGENT_PATH};
use initrd::InitrdError;
use kernel::KernelError;
use link::{Link, LinkError, Liveness};
use qemu::{ConnectError, DiskFormat, Drive, LaunchSpec, Qemu, QemuError};
use snapshot::{MigrationError, Origin, ResumeError};

/// Boot deadline from QEMU launch to a ready agent (SPEC §3).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `shutdown` waits for the guest to power off before killing QEMU.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a failed boot waits for a dying QEMU to exit, for its status and stderr.
const EXIT_EVIDENCE_WAIT: Duration = Duration::from_secs(2);
/// Console lines carried by boot errors and shown in failure reports.
pub const CONSOLE_TAIL_LINES: usize = 20;

/// A resource lease (from the pool) that a VM holds until it is shut down or killed.
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
    pub boot_timeout: Duration,
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
            op_timeout: Duration::from_secs(600),
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

/// Why a boot failed. VM failures carry the console log path and its tail.
#[derive(Debug, Error)]
pub enum BootError {
    #[error("profile '{profile}': {source}")]
    Kernel {
        profile: String,
        #[source]
        source: KernelError,
    },
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("VM {vm}: cannot create {path}: {source}")]
    Setup {
        vm: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM {vm}: QEMU exited ({status}) before the agent was ready{}", stderr_suffix(.stderr))]
    QemuExited {
        vm: String,
        status: String,
        stderr: String,
        console_log: PathBuf,
        console_tail: String,
    },
    #[error("VM {vm}: kernel panic during boot: {panic}")]
    KernelPanic {
        vm: String,
        panic: String,
        console_log: PathBuf,
        console_tail: String,
    },
    #[error("VM {vm}: the agent did not answer within {timeout:?} (boot timeout)")]
    Timeout {
        vm: String,
        timeout: Duration,
        console_log: PathBuf,
        console_tail: String,
    },
    #[error("VM {vm}: cannot connect to the agent socket {path}: {source}")]
    Socket {
        vm: String,
        path: PathBuf,
        source: std::io::Error,
        console_log: PathBuf,
        console_tail: String,
    },
    #[error("VM {vm}: agent handshake failed: {source}")]
    Handshake {
        vm: String,
        #[source]
        source: Box<LinkError>,
        console_log: PathBuf,
        console_tail: String,
    },
    #[error("VM {vm}: {source}")]
    Resume {
        vm: String,
        #[source]
        source: Box<ResumeError>,
        console_log: PathBuf,
        console_tail: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; QEMU stderr: {stderr}")
    }
}

impl BootError {
    /// The console log of the VM that failed to boot, when QEMU ran.
    pub fn console_log(&self) -> Option<&Path> {
        match self {
            BootError::QemuExited { console_log, .. }
            | BootError::KernelPanic { console_log, .. }
            | BootError::Timeout { console_log, .. }
            | BootError::Socket { console_log, .. }
            | BootError::Handshake { console_log, .. }
            | BootError::Resume { console_log, .. } => Some(console_log),
            _ => None,
        }
    }

    /// The last console lines, when QEMU ran.
    pub fn console_tail(&self) -> Option<&str> {
        match self {
            BootError::QemuExited { console_tail, .. }
            | BootError::KernelPanic { console_tail, .. }
            | BootError::Timeout { console_tail, .. }
            | BootError::Socket { console_tail, .. }
            | BootError::Handshake { console_tail, .. }
            | BootError::Resume { console_tail, .. } => Some(console_tail),
            _ => None,
        }
    }
}

/// A failed operation on a booted VM.
#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("VM {vm}: {op}: {reason}")]
    Died {
        vm: String,
        op: &'static str,
        reason: String,
    },
    #[error("VM {vm}: {op}: the VM is not running (it was shut down or killed)")]
    Stopped { vm: String, op: &'static str },
    #[error("VM {vm}: write_file {path}: {size} bytes exceeds the {MAX_DATA}-byte limit")]
    TooLarge {
        vm: String,
        path: String,
        size: usize,
    },
    #[error("VM {vm}: dmesg: invalid pattern {pattern:?}: {source}")]
    Pattern {
        vm: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("VM {vm}: {op}: unexpected agent answer {got}")]
    Unexpected {
        vm: String,
        op: &'static str,
        got: String,
    },
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

/// The result of `vm:exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// 128+n when the command died from signal n.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }
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
    link: Link,
    channel: AgentChannel,
    lease: Option<Lease>,
    private_initrd: Option<PathBuf>,
    op_timeout: Duration,
    running: bool,
    /// What a snapshot of this VM must reproduce.
    origin: Origin,
}

static NEXT_VM: AtomicU32 = AtomicU32::new(1);

impl Vm {
    /// Boots a VM and waits for its agent's handshake. `lease` (the pool's resource
    /// reservation) is held until shutdown, kill or drop; on a failed boot it is
    /// dropped before returning.
    pub fn boot(config: VmConfig, lease: Option<Lease>) -> Result<Vm, BootError> {
        let start = Instant::now();
        let profile = &config.profile;
        let kernel_err = |source| BootError::Kernel {
            profile: profile.name.clone(),
            source,
        };
        let release = kernel::kernel_version(&profile.kernel).map_err(kernel_err)?;
        let modules = initrd::agent_modules(&profile.name, &release)?;
        let base = initrd::prepare_base(
            &config.run_dir,
            &initrd::BaseInputs {
                profile: &profile.name,
                user_initrd: profile.initrd.as_deref(),
                init: &profile.init,
                modules: &modules,
                agent: agent_bin::AGENT,
            },
        )?;

        let dir = config
            .run_dir
            .join(format!("vm{}", NEXT_VM.fetch_add(1, Ordering::Relaxed)));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| BootError::Setup {
                vm: config.name.clone(),
                path: dir.clone(),
                source,
            })?;
        let private_initrd = if config.files.is_empty() {
            None
        } else {
            let path = dir.join("initrd.img");
            initrd::with_files(&base, &config.files, &path)?;
            Some(path)
        };

        let mut drives = Vec::new();
        if let Some(rootfs) = &profile.rootfs {
            drives.push(Drive {
                path: rootfs.clone(),
                format: DiskFormat::detect(rootfs),
                readonly: true,
            });
        }
        drives.extend(config.disks.iter().map(|d| Drive {
            path: d.path.clone(),
            format: d.format,
            readonly: d.readonly,
        }));
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
        // can miss its window and panic ("IO-APIC + timer doesn't work!"); seen in CI
        // with several VMs booting at once on 2 cores.
        let append = format!(
            "console=ttyS0 rdinit={AGENT_PATH} panic=-1 no_timer_check {}",
            profile.append
        );
        let spec = LaunchSpec {
            vm: config.name.clone(),
            qemu: config.qemu.clone(),
            dir,
            kernel: profile.kernel.clone(),
            initrd: private_initrd.clone().unwrap_or(base),
            append: append.trim_end().to_string(),
            memory_mib: config.memory_mib,
            cpus: config.cpus,
            use_kvm: config.use_kvm,
            drives,
            resume: false,
        };
        let mut qemu = Qemu::launch(&spec)?;
        let deadline = start + config.boot_timeout;
        match handshake(&config.name, &qemu, deadline) {
            Ok((link, channel)) => Ok(Vm {
                name: config.name,
                qemu,
                link,
                channel,
                lease,
                private_initrd,
                op_timeout: config.op_timeout,
                running: true,
                origin: Origin::new(spec, config.profile, config.boot_timeout),
            }),
            Err(failure) => {
                let error = boot_failure(&config.name, &mut qemu, failure, config.boot_timeout);
                drop(qemu);
                if let Some(path) = private_initrd {
                    let _ = fs::remove_file(path);
                }
                Err(error)
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The console log file (kept after the VM ends, for failure reports).
    pub fn console_log(&self) -> &Path {
        self.qemu.console_path()
    }

    /// The last `lines` console lines.
    pub fn console_tail(&self, lines: usize) -> String {
        self.qemu.console_tail(lines)
    }

    /// The channel the agent answered on.
    pub fn channel(&self) -> AgentChannel {
        self.channel
    }

    /// The agent link, for operations beyond the basic ones (syscalls, jobs, workers).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The deadline each agent operation gets.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
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

    /// Runs `cmd` with `/bin/sh -c`; a non-zero exit is a result, not an error.
    pub fn exec(&self, cmd: &str) -> Result<ExecOutput, VmError> {
        let request = Request::Exec {
            cmd: cmd.to_string(),
        };
        match self.call("exec", &request)? {
            Response::Exec {
                exit_code,
                stdout,
                stderr,
            } => Ok(ExecOutput {
                exit_code,
                stdout,
                stderr,
            }),
            other => Err(self.unexpected("exec", other)),
        }
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        let request = Request::ReadFile {
            path: path.to_string(),
        };
        match self.call("read_file", &request)? {
            Response::File { data } => Ok(data),
            other => Err(self.unexpected("read_file", other)),
        }
    }

    /// Creates or truncates `path` (mode 0644) with `data` (at most 16 MiB).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), VmError> {
        if data.len() > MAX_DATA as usize {
            return Err(VmError::TooLarge {
                vm: self.name.clone(),
                path: path.to_string(),
                size: data.len(),
            });
        }
        let request = Request::WriteFile {
            path: path.to_string(),
            data: data.to_vec(),
            mode: None,
        };
        match self.call("write_file", &request)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("write_file", other)),
        }
    }

    /// The kernel log; with `pattern` (a regular expression), only matching lines.
    pub fn dmesg(&self, pattern: Option<&str>) -> Result<String, VmError> {
        let filter = pattern
            .map(|p| {
                regex::Regex::new(p).map_err(|source| VmError::Pattern {
                    vm: self.name.clone(),
                    pattern: p.to_string(),
                    source,
                })
            })
            .transpose()?;
        let log = match self.call("dmesg", &Request::Dmesg)? {
            Response::Dmesg { log } => String::from_utf8_lossy(&log).into_owned(),
            other => return Err(self.unexpected("dmesg", other)),
        };
        Ok(match filter {
            None => log,
            Some(re) => log
                .lines()
                .filter(|line| re.is_match(line))
                .map(|line| format!("{line}\n"))
                .collect(),
        })
    }

    /// Mounts proc, sysfs, securityfs and devtmpfs where missing (idempotent).
    pub fn mount_vfs(&self) -> Result<(), VmError> {
        match self.call("mount_vfs", &Request::MountVfs)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("mount_vfs", other)),
        }
    }

    /// Asks the guest to power off, waits up to [`SHUTDOWN_GRACE`], then kills QEMU.
    /// Releases the lease either way.
    pub fn shutdown(&mut self) -> ShutdownOutcome {
        if !self.running {
            return ShutdownOutcome::AlreadyStopped;
        }
        let start = Instant::now();
        // The agent may power off before its answer leaves the guest: a lost
        // connection here is the expected outcome, not a failure.
        let _ = self
            .link
            .call(MAIN_CHANNEL, &Request::Shutdown, SHUTDOWN_GRACE);
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

    fn call(&self, op: &'static str, request: &Request) -> Result<Response, VmError> {
        self.check_running(op)?;
        self.link
            .call(MAIN_CHANNEL, request, self.op_timeout)
            .map_err(|error| self.explain(op, error))
    }

    /// Sends `request` on `channel` (the agent's main channel or a worker's) and waits
    /// up to `timeout`; a lost connection is explained by the VM's fate when known.
    pub fn call_channel(
        &self,
        channel: u32,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, VmError> {
        let op = request.op_name();
        self.check_running(op)?;
        self.link
            .call(channel, request, timeout)
            .map_err(|error| self.explain(op, error))
    }

    /// A lost connection usually means QEMU is exiting, and its stdout (which
    /// carries the reason, e.g. a panic) closes a moment after the socket: wait
    /// briefly for that better evidence.
    fn explain(&self, op: &'static str, error: LinkError) -> VmError {
        if !matches!(error, LinkError::Disconnected { .. }) {
            return error.into();
        }
        let deadline = Instant::now() + EXIT_EVIDENCE_WAIT;
        while Instant::now() < deadline {
            if let Some(reason) = self.qemu.dead_reason() {
                return VmError::Died {
                    vm: self.name.clone(),
                    op,
                    reason,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        error.into()
    }

    fn unexpected(&self, op: &'static str, got: Response) -> VmError {
        VmError::Unexpected {
            vm: self.name.clone(),
            op,
            got: format!("{got:?}").chars().take(200).collect(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.qemu.kill();
        self.stopped();
    }
}

/// Why the handshake did not complete.
enum HandshakeFailure {
    Connect(ConnectError),
    Link(Vec<LinkError>),
}

/// Handshakes on the virtio-serial port and on the UART at once; the agent answers
/// on whichever it opened. The other attempt is cancelled through its liveness check.
fn handshake(
    vm: &str,
    qemu: &Qemu,
    deadline: Instant,
) -> Result<(Link, AgentChannel), HandshakeFailure> {
    let (virtio, uart) = qemu
        .connect_agent_sockets(deadline)
        .map_err(HandshakeFailure::Connect)?;
    let attempts = [
        (AgentChannel::VirtioSerial, virtio),
        (AgentChannel::Uart, uart),
    ];
    let cancels: Vec<Arc<AtomicBool>> = attempts
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (index, (channel, stream)) in attempts.into_iter().enumerate() {
        let vm_liveness = qemu.liveness();
        let cancel = Arc::clone(&cancels[index]);
        let liveness: Liveness = Arc::new(move || {
            if cancel.load(Ordering::Acquire) {
                return Some("the agent answered on the other channel".to_string());
            }
            vm_liveness()
        });
        let timeout = deadline.saturating_duration_since(Instant::now());
        let tx = tx.clone();
        let vm = vm.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("handshake-{vm}"))
            .spawn(move || {
                let _ = tx.send((
                    index,
                    channel,
                    Link::connect(&vm, stream, liveness, timeout),
                ));
            });
        if let Ok(thread) = thread {
            threads.push(thread);
        }
    }
    drop(tx);
    let mut won = None;
    let mut errors = Vec::new();
    for (index, channel, result) in rx {
        match result {
            Ok(link) if won.is_none() => {
                for (other, cancel) in cancels.iter().enumerate() {
                    if other != index {
                        cancel.store(true, Ordering::Release);
                    }
                }
                // The UART has no backpressure of its own: pace the host's writes
                // with the agent's credits. Virtio-serial stays unpaced.
                if channel == AgentChannel::Uart {
                    link.pace_for_uart();
                }
                won = Some((link, channel));
            }
            Ok(_) => {}
            Err(error) => errors.push(error),
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    won.ok_or(HandshakeFailure::Link(errors))
}

/// Turns a failed handshake into the most telling boot error.
fn boot_failure(
    vm: &str,
    qemu: &mut Qemu,
    failure: HandshakeFailure,
    timeout: Duration,
) -> BootError {
    // A reset socket usually means QEMU is exiting; its stdout closes a moment later.
    // Reaping it joins the console thread, so the log and panic line are complete.
    let looks_dead = qemu.dead_reason().is_some()
        || match &failure {
            HandshakeFailure::Connect(ConnectError::Dead(_)) => true,
            HandshakeFailure::Connect(ConnectError::Timeout { .. }) => false,
            HandshakeFailure::Link(errors) => errors
                .iter()
                .any(|e| matches!(e, LinkError::Disconnected { .. } | LinkError::VmDead { .. })),
        };
    let status = if looks_dead {
        qemu.wait_exit(EXIT_EVIDENCE_WAIT)
    } else {
        qemu.try_status()
    };
    let console_log = qemu.console_path().to_path_buf();
    let console_tail = qemu.console_tail(CONSOLE_TAIL_LINES);
    if let Some(panic) = qemu.panic_line() {
        return BootError::KernelPanic {
            vm: vm.to_string(),
            panic,
            console_log,
            console_tail,
        };
    }
    if let Some(status) = status {
        return BootError::QemuExited {
            vm: vm.to_string(),
            status: status.to_string(),
            stderr: qemu.stderr_text(),
            console_log,
            console_tail,
        };
    }
    let first_real = match failure {
        HandshakeFailure::Connect(ConnectError::Dead(_)) => None,
        HandshakeFailure::Connect(ConnectError::Timeout { path, error }) => {
            return BootError::Socket {
                vm: vm.to_string(),
                path,
                source: error,
                console_log,
                console_tail,
            }
        }
        HandshakeFailure::Link(errors) => errors.into_iter().find(|e| {
            !matches!(
                e,
                LinkError::HandshakeTimeout { .. } | LinkError::VmDead { .. }
            )
        }),
    };
    match first_real {
        Some(source) => BootError::Handshake {
            vm: vm.to_string(),
            source: Box::new(source),
            console_log,
            console_tail,
        },
        None => BootError::Timeout {
            vm: vm.to_string(),
            timeout,
            console_log,
            console_tail,
        },
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

    #[test]
    fn boot_error_messages_name_the_vm_and_keep_stderr() {
        let error = BootError::QemuExited {
            vm: "a.lua#1".into(),
            status: "exit status: 1".into(),
            stderr: "qemu-system-x86_64: -m 0M: bad size".into(),
            console_log: "/r/vm1/console.log".into(),
            console_tail: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "VM a.lua#1: QEMU exited (exit status: 1) before the agent was ready; \
             QEMU stderr: qemu-system-x86_64: -m 0M: bad size"
        );
        assert_eq!(error.console_log(), Some(Path::new("/r/vm1/console.log")));
    }
}
