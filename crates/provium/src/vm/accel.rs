//! Acceleration choice: KVM only after proving it runs a guest, otherwise TCG.
//!
//! `/dev/kvm` opening is not proof: on some hosts (nested virtualization without `vmx`)
//! every KVM guest crawls so slowly that a kernel seems to hang. So once per run Provium
//! boots a one-sector guest through SeaBIOS under KVM with a short deadline; a working
//! KVM finishes in about 0.1 s. The guest writes to QEMU's `isa-debug-exit` port, which
//! makes QEMU exit with a known status, so success cannot be confused with a crash.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::procs;

/// How long the KVM test guest may take. Measured: a working KVM boots it in ~0.1 s,
/// TCG in ~0.12 s, the broken KVM of the development machines in 4–5 s.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// The package that provides `qemu-system-x86_64` on Debian and Ubuntu.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// The port the probe guest writes to; QEMU exits with `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u8 = 0xf4;
const PROBE_EXIT_STATUS: i32 = (1 << 1) | 1;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The QEMU arguments this choice implies. QEMU's default CPU model is too old for
    /// some kernels, hence `host` under KVM and `max` under TCG.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AccelError {
    #[error("PROVIUM_ACCEL='{value}' is not a known accelerator: use PROVIUM_ACCEL=kvm or PROVIUM_ACCEL=tcg, or unset it to detect")]
    BadOverride { value: String },
    #[error("PROVIUM_QEMU='{}' {reason}: point it at a qemu-system-x86_64 binary or unset it", path.display())]
    BadQemuOverride { path: PathBuf, reason: String },
    #[error("{QEMU_PROGRAM} not found on PATH: install the {QEMU_PACKAGE} package (apt-get install {QEMU_PACKAGE}) or set PROVIUM_QEMU to the binary")]
    QemuMissing,
}

/// Why KVM was not used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KvmUnusable {
    #[error("/dev/kvm cannot be opened read-write: {reason}")]
    NoDevice { reason: String },
    #[error(
        "the host CPU advertises no hardware virtualisation (no vmx or svm flag in /proc/cpuinfo)"
    )]
    NoVirtualisationFlag,
    #[error("a one-sector test guest did not finish booting under KVM within {:.1}s", deadline.as_secs_f64())]
    TooSlow { deadline: Duration },
    #[error("the KVM test guest ended with {status} instead of the debug-exit status {PROBE_EXIT_STATUS}{}", stderr_suffix(stderr))]
    BadExit { status: String, stderr: String },
    #[error("cannot run the KVM test guest: {reason}")]
    ProbeFailed { reason: String },
}

fn stderr_suffix(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!("; QEMU said: {text}"),
    }
}

/// The outcome of [`decide`]: the accelerator and, when KVM was tried and rejected,
/// why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub accel: Accel,
    pub kvm_unusable: Option<KvmUnusable>,
}

/// The QEMU binary: `PROVIUM_QEMU` when set, otherwise `qemu-system-x86_64` on `PATH`.
pub fn qemu_binary() -> Result<PathBuf, AccelError> {
    if let Some(path) = std::env::var_os("PROVIUM_QEMU").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(AccelError::BadQemuOverride {
                path,
                reason: "is not a file".to_string(),
            }),
            Err(e) => Err(AccelError::BadQemuOverride {
                path,
                reason: format!("cannot be used: {e}"),
            }),
        };
    }
    find_on_path(QEMU_PROGRAM, &std::env::var_os("PATH").unwrap_or_default())
        .ok_or(AccelError::QemuMissing)
}

fn find_on_path(program: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The accelerator, decided once per process: `PROVIUM_ACCEL` when set, otherwise
/// KVM if [`probe_kvm`] proves it works. The decision says why KVM was rejected, for
/// the one notice the run prints.
pub fn choose(qemu: &Path) -> Result<Decision, AccelError> {
    static CHOICE: OnceLock<Result<Decision, AccelError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let forced = std::env::var("PROVIUM_ACCEL").ok();
            decide(forced.as_deref(), qemu, PROBE_DEADLINE)
        })
        .clone()
}

/// The notice a run prints when KVM was rejected.
pub fn fallback_notice(reason: &KvmUnusable) -> String {
    format!("provium: KVM is unusable ({reason}); using TCG, which is slower (set PROVIUM_ACCEL=tcg to skip this check)")
}

/// The decision behind [`choose`], without caching: `forced` is the value
/// of `PROVIUM_ACCEL` (empty counts as unset).
pub fn decide(
    forced: Option<&str>,
    qemu: &Path,
    deadline: Duration,
) -> Result<Decision, AccelError> {
    let forced = forced.map(str::trim).filter(|v| !v.is_empty());
    let accel = match forced.map(str::to_ascii_lowercase).as_deref() {
        Some("kvm") => Some(Accel::Kvm),
        Some("tcg") => Some(Accel::Tcg),
        Some(_) => {
            return Err(AccelError::BadOverride {
                value: forced.unwrap_or_default().to_string(),
            })
        }
        None => None,
    };
    if let Some(accel) = accel {
        return Ok(Decision {
            accel,
            kvm_unusable: None,
        });
    }
    if !cpu_has_virtualisation_flag(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()) {
        return Ok(Decision {
            accel: Accel::Tcg,
            kvm_unusable: Some(KvmUnusable::NoVirtualisationFlag),
        });
    }
    Ok(match probe_kvm(qemu, deadline) {
        Ok(_) => Decision {
            accel: Accel::Kvm,
            kvm_unusable: None,
        },
        Err(reason) => Decision {
            accel: Accel::Tcg,
            kvm_unusable: Some(reason),
        },
    })
}

/// Without vmx/svm a KVM guest cannot run at hardware speed (measured here: `/dev/kvm`
/// exists, the CPU lacks vmx, and a one-sector guest takes 4–5 s), so the 2 s probe can
/// be skipped. An unreadable cpuinfo counts as "no flag": TCG is always safe.
fn cpu_has_virtualisation_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Boots the one-sector test guest under KVM and returns how long it took. Never takes
/// much longer than `deadline`: the guest's process group is killed when it expires.
pub fn probe_kvm(qemu: &Path, deadline: Duration) -> Result<Duration, KvmUnusable> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| KvmUnusable::NoDevice {
            reason: e.to_string(),
        })?;
    let image = ProbeImage::create().map_err(|e| KvmUnusable::ProbeFailed {
        reason: format!("writing the boot sector: {e}"),
    })?;
    run_probe_guest(qemu, Accel::Kvm, &image.path, deadline)
}

fn run_probe_guest(
    qemu: &Path,
    accel: Accel,
    image: &Path,
    deadline: Duration,
) -> Result<Duration, KvmUnusable> {
    let started = Instant::now();
    let mut command = Command::new(qemu);
    command
        .args(accel.qemu_args())
        .args([
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-m",
            "16",
        ])
        .arg("-device")
        .arg(format!(
            "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("provium exited during spawn"));
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| KvmUnusable::ProbeFailed {
        reason: format!("starting {}: {e}", qemu.display()),
    })?;
    let pid = child.id() as i32;
    procs::register(pid);
    let waited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= deadline => break Err(None),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(Some(e)),
        }
    };
    if waited.is_err() {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is QEMU's own.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        // Reaping a SIGKILLed child returns promptly.
        let _ = child.wait();
    }
    procs::unregister(pid);
    let elapsed = started.elapsed();
    let status = match waited {
        Ok(status) => status,
        Err(None) => return Err(KvmUnusable::TooSlow { deadline }),
        Err(Some(e)) => {
            return Err(KvmUnusable::ProbeFailed {
                reason: format!("waiting for {}: {e}", qemu.display()),
            })
        }
    };
    if status.code() == Some(PROBE_EXIT_STATUS) {
        return Ok(elapsed);
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    Err(KvmUnusable::BadExit {
        status: status.to_string(),
        stderr,
    })
}

/// The probe's boot sector in a temporary file, removed on drop.
struct ProbeImage {
    path: PathBuf,
}

impl ProbeImage {
    fn create() -> std::io::Result<ProbeImage> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "provium-kvm-probe-{}-{nanos}.img",
            std::process::id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let image = ProbeImage { path };
        file.write_all(&boot_sector())?;
        Ok(image)
    }
}

impl Drop for ProbeImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `mov al, 1; out 0xf4, al; hlt; jmp $-1` with the 0x55AA boot signature: SeaBIOS
/// loads it at 0x7c00 and the write makes QEMU exit with status 3.
fn boot_sector() -> [u8; 512] {
    let code = [0xb0, 0x01, 0xe6, DEBUG_EXIT_PORT, 0xf4, 0xeb, 0xfd];
    let mut sector = [0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualisation_flag_is_read_from_cpu_flags_only() {
        assert!(cpu_has_virtualisation_flag(
            "model name\t: x\nflags\t\t: fpu vmx sse\n"
        ));
        assert!(cpu_has_virtualisation_flag("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virtualisation_flag("flags\t\t: fpu hypervisor\n"));
        assert!(!cpu_has_virtualisation_flag("model name\t: vmx\n"));
        assert!(!cpu_has_virtualisation_flag(""));
    }

    fn qemu() -> PathBuf {
        qemu_binary().expect("qemu-system-x86_64 is installed on the test machines")
    }

    #[test]
    fn accelerators_imply_their_qemu_arguments() {
        assert_eq!(Accel::Kvm.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
        assert_eq!(Accel::Tcg.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
    }

    #[test]
    fn forced_choices_skip_the_probe() {
        let missing = Path::new("/nonexistent/qemu");
        let started = Instant::now();
        let kvm = decide(Some("kvm"), missing, PROBE_DEADLINE).unwrap();
        assert_eq!(kvm.accel, Accel::Kvm);
        assert_eq!(kvm.kvm_unusable, None);
        assert_eq!(
            decide(Some(" TCG "), missing, PROBE_DEADLINE)
                .unwrap()
                .accel,
            Accel::Tcg
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        let err = decide(Some("hvf"), missing, PROBE_DEADLINE).unwrap_err();
        assert_eq!(
            err,
            AccelError::BadOverride {
                value: "hvf".to_string()
            }
        );
        assert!(err.to_string().contains("PROVIUM_ACCEL=kvm"));
    }

    #[test]
    fn missing_qemu_names_the_package() {
        assert_eq!(
            find_on_path(QEMU_PROGRAM, std::ffi::OsStr::new("/nonexistent")),
            None
        );
        assert!(AccelError::QemuMissing
            .to_string()
            .contains("qemu-system-x86 package"));
        assert!(find_on_path(QEMU_PROGRAM, std::ffi::OsStr::new("/usr/bin:/bin")).is_some());
    }

    #[test]
    fn the_probe_guest_really_runs_under_tcg() {
        let image = ProbeImage::create().unwrap();
        let took = run_probe_guest(&qemu(), Accel::Tcg, &image.path, Duration::from_secs(20))
            .expect("the boot sector reaches the debug-exit port under TCG");
        eprintln!("TCG probe guest took {took:?}");
        let path = image.path.clone();
        drop(image);
        assert!(!path.exists());
    }

    #[test]
    fn a_broken_qemu_is_reported_with_its_stderr() {
        let image = ProbeImage::create().unwrap();
        let err = run_probe_guest(
            Path::new("/bin/false"),
            Accel::Tcg,
            &image.path,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, KvmUnusable::BadExit { .. }), "{err}");
    }

    #[test]
    fn the_choice_is_made_within_the_deadline_and_cached() {
        let started = Instant::now();
        let first = choose(&qemu()).unwrap();
        let took = started.elapsed();
        eprintln!("accelerator {} chosen in {took:?}", first.accel.name());
        assert!(took < PROBE_DEADLINE + Duration::from_secs(1), "{took:?}");
        let started = Instant::now();
        assert_eq!(choose(&qemu()).unwrap(), first);
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn the_kvm_probe_returns_within_its_deadline() {
        let deadline = Duration::from_millis(1500);
        let started = Instant::now();
        let outcome = probe_kvm(&qemu(), deadline);
        let took = started.elapsed();
        eprintln!("KVM probe: {outcome:?} after {took:?}");
        assert!(took < deadline + Duration::from_secs(1), "{took:?}");
        match outcome {
            Ok(guest_time) => assert!(guest_time < deadline),
            Err(reason) => assert!(!reason.to_string().is_empty()),
        }
    }
}
