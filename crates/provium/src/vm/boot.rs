//! The one boot path, shared by cold boots and snapshot resumes: the VM's directory,
//! the QEMU launch, (for a resume) loading the migration stream, the agent handshake,
//! and, when any of it fails, the classification of why into a [`BootError`] that
//! carries QEMU's stderr and the console tail.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::initrd::InitrdError;
use super::kernel::KernelError;
use super::link::{Link, LinkError, Liveness};
use super::qemu::{stderr_suffix, ConnectError, LaunchSpec, Qemu, QemuError};
use super::snapshot::{self, ResumeError};
use super::{AgentChannel, CONSOLE_TAIL_LINES};
use crate::cancel;
use crate::vm::client::EXIT_EVIDENCE_WAIT;

/// Why a handshake attempt gave up on a guest whose console stopped printing.
const WENT_SILENT: &str = "the console went silent";

/// Numbers the VMs' directories (`vm<N>/`) within the process.
static NEXT_VM: AtomicU32 = AtomicU32::new(1);

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
    Modules(#[from] super::modules::ModulesError),
    #[error(transparent)]
    Machine(#[from] super::machine::MachineError),
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
    /// The console was silent for the boot timeout and the agent had not answered:
    /// the guest stopped making progress.
    #[error("VM {vm}: the console was silent for {} and the agent had not answered (boot timeout){}", crate::duration::show(*.timeout), load_note(.load))]
    Timeout {
        vm: String,
        timeout: Duration,
        /// The host's load and cores, when it was saturated.
        load: Option<(f64, usize)>,
        console_log: PathBuf,
        console_tail: String,
    },
    /// The guest kept printing but its agent never answered within the ceiling.
    #[error("VM {vm}: the agent did not answer within {} although the console kept printing (boot ceiling){}", crate::duration::show(*.ceiling), load_note(.load))]
    Ceiling {
        vm: String,
        ceiling: Duration,
        load: Option<(f64, usize)>,
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
    /// The file had to stop (its time ran out, the run was interrupted) during the boot.
    #[error("VM {vm}: boot stopped: {reason}")]
    Stopped { vm: String, reason: String },
    #[error("VM {vm}: {source}")]
    Resume {
        vm: String,
        #[source]
        source: Box<ResumeError>,
        console_log: PathBuf,
        console_tail: String,
    },
}

fn load_note(load: &Option<(f64, usize)>) -> String {
    match load {
        Some((load, cores)) => format!(
            "; the host was saturated: load {load:.1} on {cores} core{}",
            if *cores == 1 { "" } else { "s" }
        ),
        None => String::new(),
    }
}

/// The host's 1-minute load average and core count, when the load exceeds the cores.
fn saturation() -> Option<(f64, usize)> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (load > cores as f64).then_some((load, cores))
}

/// How long a boot may take: `silence` without console output (the guest stopped
/// making progress), and `ceiling` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLimits {
    pub silence: Duration,
    pub ceiling: Duration,
}

impl BootError {
    /// The console log of the VM that failed to boot, when QEMU ran.
    pub fn console_log(&self) -> Option<&Path> {
        match self {
            BootError::QemuExited { console_log, .. }
            | BootError::KernelPanic { console_log, .. }
            | BootError::Timeout { console_log, .. }
            | BootError::Ceiling { console_log, .. }
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
            | BootError::Ceiling { console_tail, .. }
            | BootError::Socket { console_tail, .. }
            | BootError::Handshake { console_tail, .. }
            | BootError::Resume { console_tail, .. } => Some(console_tail),
            _ => None,
        }
    }
}

/// Creates the VM's private directory (`<run dir>/vm<N>/`, mode 0700) for its sockets,
/// console log and QEMU stderr.
pub(super) fn vm_dir(run_dir: &Path, vm: &str) -> Result<PathBuf, BootError> {
    let dir = run_dir.join(format!("vm{}", NEXT_VM.fetch_add(1, Ordering::Relaxed)));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| BootError::Setup {
            vm: vm.to_string(),
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// A guest whose agent answered.
pub(super) struct Started {
    pub qemu: Qemu,
    pub link: Link,
    pub channel: AgentChannel,
}

/// Launches `spec` and waits for the agent's handshake while the guest makes
/// progress: the boot fails when the console has been silent for `limits.silence`
/// (or QEMU exits, or the kernel panics), and at `limits.ceiling` in any case. With
/// `incoming`, QEMU starts paused (`spec.resume`), the snapshot's stream is loaded
/// and the guest continued before the handshake. Any failure is classified with
/// QEMU's evidence; QEMU never outlives a failure.
pub(super) fn start(
    spec: &LaunchSpec,
    incoming: Option<&Path>,
    limits: BootLimits,
) -> Result<Started, BootError> {
    let deadline = Instant::now() + limits.ceiling;
    let mut qemu = Qemu::launch(spec)?;
    if let Some(state) = incoming {
        if let Err(source) = snapshot::load(&mut qemu, state, deadline) {
            return Err(BootError::Resume {
                vm: spec.vm.clone(),
                source: Box::new(ResumeError {
                    snapshot: state.to_path_buf(),
                    source,
                }),
                console_log: qemu.console_path().to_path_buf(),
                console_tail: qemu.console_tail(CONSOLE_TAIL_LINES),
            });
        }
    }
    match handshake(&spec.vm, &qemu, deadline, limits.silence) {
        Ok((link, channel)) => Ok(Started {
            qemu,
            link,
            channel,
        }),
        Err(failure) => Err(match cancel::checkpoint() {
            Err(stop) => BootError::Stopped {
                vm: spec.vm.clone(),
                reason: stop.to_string(),
            },
            Ok(()) => classify(&spec.vm, &mut qemu, failure, limits),
        }),
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
    silence: Duration,
) -> Result<(Link, AgentChannel), HandshakeFailure> {
    // QEMU creates its sockets as it starts: the boot timeout is plenty for them.
    let (virtio, uart) = qemu
        .connect_agent_sockets((Instant::now() + silence).min(deadline))
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
    // The attempts run on their own threads: they check the booting file's token,
    // during the handshake only (the winner's link lives on with this check).
    let file = cancel::current();
    let handshaking = Arc::new(AtomicBool::new(true));
    for (index, (channel, stream)) in attempts.into_iter().enumerate() {
        let vm_liveness = qemu.liveness();
        let quiet = qemu.silence_watch();
        let cancel = Arc::clone(&cancels[index]);
        let file = file.clone();
        let handshaking = Arc::clone(&handshaking);
        let liveness: Liveness = Arc::new(move || {
            if cancel.load(Ordering::Acquire) {
                return Some("the agent answered on the other channel".to_string());
            }
            if handshaking.load(Ordering::Acquire) {
                if let Some(Err(stop)) = file.as_ref().map(|f| f.check()) {
                    return Some(stop.to_string());
                }
                if quiet() >= silence {
                    return Some(WENT_SILENT.to_string());
                }
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
    let mut errors = Vec::new();
    for (index, channel, result) in rx {
        match result {
            Ok(link) => {
                handshaking.store(false, Ordering::Release);
                // The losing attempt sees its cancel at its next liveness check (up
                // to LIVENESS_POLL later), drops its stream and ends on its own: the
                // boot does not wait for it.
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
                return Ok((link, channel));
            }
            Err(error) => errors.push(error),
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    handshaking.store(false, Ordering::Release);
    Err(HandshakeFailure::Link(errors))
}

/// Turns a failed handshake into the most telling boot error (the caller drops QEMU).
fn classify(vm: &str, qemu: &mut Qemu, failure: HandshakeFailure, limits: BootLimits) -> BootError {
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
    let went_silent = qemu.console_silence() >= limits.silence
        || matches!(&failure, HandshakeFailure::Link(errors) if errors.iter().any(
            |e| matches!(e, LinkError::VmDead { reason, .. } if reason == WENT_SILENT)
        ));
    if let Some(panic) = qemu.panic_line() {
        BootError::KernelPanic {
            vm: vm.to_string(),
            panic,
            console_log,
            console_tail,
        }
    } else if let Some(status) = status {
        BootError::QemuExited {
            vm: vm.to_string(),
            status: status.to_string(),
            stderr: qemu.stderr_text(),
            console_log,
            console_tail,
        }
    } else {
        let first_real = match failure {
            HandshakeFailure::Connect(ConnectError::Dead(_)) => None,
            HandshakeFailure::Connect(ConnectError::Timeout { path, error }) => {
                return BootError::Socket {
                    vm: vm.to_string(),
                    path,
                    source: error,
                    console_log,
                    console_tail,
                };
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
            None if went_silent => BootError::Timeout {
                vm: vm.to_string(),
                timeout: limits.silence,
                load: saturation(),
                console_log,
                console_tail,
            },
            None => BootError::Ceiling {
                vm: vm.to_string(),
                ceiling: limits.ceiling,
                load: saturation(),
                console_log,
                console_tail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn timeouts_name_the_silence_or_the_ceiling_and_a_saturated_host() {
        let silent = BootError::Timeout {
            vm: "a.lua#1".into(),
            timeout: Duration::from_secs(30),
            load: Some((7.9, 2)),
            console_log: "/r/vm1/console.log".into(),
            console_tail: String::new(),
        };
        assert_eq!(
            silent.to_string(),
            "VM a.lua#1: the console was silent for 30s and the agent had not answered \
             (boot timeout); the host was saturated: load 7.9 on 2 cores"
        );
        let ceiling = BootError::Ceiling {
            vm: "a.lua#1".into(),
            ceiling: Duration::from_secs(300),
            load: None,
            console_log: "/r/vm1/console.log".into(),
            console_tail: String::new(),
        };
        assert_eq!(
            ceiling.to_string(),
            "VM a.lua#1: the agent did not answer within 300s although the console kept \
             printing (boot ceiling)"
        );
    }

    #[test]
    fn vm_directories_are_private_and_distinct() {
        use std::os::unix::fs::PermissionsExt;
        let run = tempfile::tempdir().unwrap();
        let a = vm_dir(run.path(), "a").unwrap();
        let b = vm_dir(run.path(), "b").unwrap();
        assert_ne!(a, b);
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
