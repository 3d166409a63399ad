//! Snapshots for fixtures: save a booted VM's memory and device state to a file with
//! QEMU migration, and start any number of fresh, independent VMs from it.
//!
//! The migration stream goes through a descriptor Provium opens itself and passes to
//! QEMU over QMP (`getfd` with SCM_RIGHTS, then `migrate fd:` / `migrate-incoming
//! fd:`). QEMU 7.2 (Debian 12) has no `file:` migration URI (it arrived in 8.2), and
//! `exec:cat > file` reports completion when the pipe took the last byte, not when
//! `cat` wrote it, so a resume can read a truncated file. With `fd:` on a regular
//! file QEMU's own `write(2)` calls put every byte in the file before it reports
//! `completed`; the file size is checked against QEMU's byte count all the same.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

use super::client::EXIT_EVIDENCE_WAIT;
use super::qemu::{stderr_suffix, LaunchSpec, Qemu, QemuError};
use super::BootProfile;
use crate::qmp::QmpError;

/// Deadline for a whole snapshot: quiesce, stop, and writing the state file.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one QMP command or the agent's quiesce answer.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `query-migrate` is asked while a stream loads or saves: loading a
/// snapshot takes 30-60 ms here, so a coarse poll would add a large part of that.
const MIGRATION_POLL: Duration = Duration::from_millis(5);
/// QEMU 7.2 caps migration at 32 MiB/s by default, which would make a snapshot of a
/// stopped guest take seconds for nothing: nothing runs while the file is written.
const MAX_BANDWIDTH: u64 = 1 << 40;
/// The name the state file's descriptor gets in QEMU's monitor.
const FD_NAME: &str = "provium-snapshot";

/// Why saving or loading a snapshot's migration stream failed.
#[derive(Debug, Error)]
pub enum MigrationError {
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU reported the migration {status}: {desc}{}", stderr_suffix(.stderr))]
    Failed {
        status: String,
        desc: String,
        /// QEMU's stderr, filled in when QEMU exited over it.
        stderr: String,
    },
    #[error("the migration did not complete within {timeout:?} (last status: {status})")]
    Timeout { timeout: Duration, status: String },
    #[error("QEMU died during the migration: {reason}{}", stderr_suffix(.stderr))]
    Died { reason: String, stderr: String },
    #[error("{path} holds {size} bytes but QEMU sent {sent}: the snapshot is truncated")]
    Truncated { path: PathBuf, size: u64, sent: u64 },
}

/// A snapshot that could not be loaded into a fresh QEMU.
#[derive(Debug, Error)]
#[error("cannot resume from {snapshot}: {source}")]
pub struct ResumeError {
    pub snapshot: PathBuf,
    #[source]
    pub source: MigrationError,
}

impl From<QemuError> for MigrationError {
    fn from(error: QemuError) -> MigrationError {
        match error {
            QemuError::Qmp { source, .. } => MigrationError::Qmp(source),
            other => MigrationError::Died {
                reason: other.to_string(),
                stderr: String::new(),
            },
        }
    }
}

/// A file removed when the last owner lets go of it.
#[derive(Debug)]
pub(super) struct OwnedFile(pub(super) PathBuf);

impl Drop for OwnedFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// How a VM was started: what a snapshot of it must reproduce exactly.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    /// The QEMU invocation (machine, devices, memory, CPUs, kernel, initrd, drives);
    /// `vm` and `dir` are replaced for each VM started from it.
    pub(super) launch: LaunchSpec,
    pub(super) profile: BootProfile,
    pub(super) boot_timeout: Duration,
    /// Keeps the initrd of the snapshot a VM was resumed from, which `launch`
    /// names, until this VM is gone or snapshotted itself.
    pub(super) initrd: Option<Arc<OwnedFile>>,
}

impl Origin {
    pub(super) fn new(launch: LaunchSpec, profile: BootProfile, boot_timeout: Duration) -> Origin {
        Origin {
            launch,
            profile,
            boot_timeout,
            initrd: None,
        }
    }
}

/// A saved VM: its migration stream plus everything needed to start an identical
/// QEMU. Dropping it deletes its files (the initrd stays while a VM resumed from it
/// still runs).
#[derive(Debug)]
pub struct Snapshot {
    state: PathBuf,
    origin: Origin,
    op_timeout: Duration,
    source_vm: String,
    size: u64,
    took: Duration,
}

impl Snapshot {
    pub(super) fn new(
        state: PathBuf,
        origin: Origin,
        op_timeout: Duration,
        source_vm: String,
        size: u64,
        took: Duration,
    ) -> Snapshot {
        Snapshot {
            state,
            origin,
            op_timeout,
            source_vm,
            size,
            took,
        }
    }

    /// How the snapshotted VM was started.
    pub(super) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The deadline each agent operation of a resumed VM gets.
    pub(super) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The migration stream file.
    pub fn path(&self) -> &Path {
        &self.state
    }

    /// The initrd the snapshot's QEMU booted (a hard link or copy owned by it).
    pub fn initrd(&self) -> &Path {
        &self.origin.launch.initrd
    }

    /// Bytes in the migration stream file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// From the quiesce request to the complete file.
    pub fn took(&self) -> Duration {
        self.took
    }

    /// The VM the snapshot was taken from.
    pub fn source_vm(&self) -> &str {
        &self.source_vm
    }

    pub fn profile(&self) -> &BootProfile {
        &self.origin.profile
    }

    pub fn memory_mib(&self) -> u64 {
        self.origin.launch.memory_mib
    }

    pub fn cpus(&self) -> u32 {
        self.origin.launch.cpus
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.state);
    }
}

/// Saves the stopped guest of `qemu` into `path`, keeping a hard link (or copy) of
/// the initrd it booted at `initrd` so the snapshot outlives the VM. The agent must
/// already be quiesced. Returns the state file's size; on failure both files are
/// removed.
pub(super) fn save(
    qemu: &mut Qemu,
    booted_initrd: &Path,
    path: &Path,
    initrd: &Path,
    deadline: Instant,
) -> Result<u64, MigrationError> {
    let result = write_state(qemu, booted_initrd, path, initrd, deadline);
    if result.is_err() {
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(initrd);
    }
    result
}

fn write_state(
    qemu: &mut Qemu,
    booted_initrd: &Path,
    path: &Path,
    initrd: &Path,
    deadline: Instant,
) -> Result<u64, MigrationError> {
    link_or_copy(booted_initrd, initrd)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| MigrationError::File {
            action: "create",
            path: path.to_path_buf(),
            source,
        })?;
    let sent = migrate_out(qemu, &file, deadline).map_err(|error| with_stderr(qemu, error))?;
    let size = file
        .metadata()
        .map_err(|source| MigrationError::File {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    // The file holds the RAM QEMU counted plus the device state after it.
    if size < sent {
        return Err(MigrationError::Truncated {
            path: path.to_path_buf(),
            size,
            sent,
        });
    }
    Ok(size)
}

/// Loads the snapshot stream `state` into a QEMU started paused (`-incoming defer`)
/// and continues the guest. A rejected stream carries QEMU's stderr.
pub(super) fn load(qemu: &mut Qemu, state: &Path, deadline: Instant) -> Result<(), MigrationError> {
    migrate_in(qemu, state, deadline).map_err(|error| with_stderr(qemu, error))
}

/// QEMU prints why it rejected a stream on stderr and exits: wait briefly for that.
fn with_stderr(qemu: &mut Qemu, mut error: MigrationError) -> MigrationError {
    if let MigrationError::Died { stderr, .. } | MigrationError::Failed { stderr, .. } = &mut error
    {
        qemu.wait_exit(EXIT_EVIDENCE_WAIT);
        *stderr = qemu.stderr_text();
    }
    error
}

/// The snapshot must outlive the VM it came from, whose initrd may be private to it:
/// a hard link is free on the run directory's filesystem.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), MigrationError> {
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| MigrationError::File {
            action: "keep the initrd as",
            path: to.to_path_buf(),
            source,
        })
}

/// Stops the guest and streams it into `file`; returns the RAM bytes QEMU sent.
fn migrate_out(qemu: &mut Qemu, file: &File, deadline: Instant) -> Result<u64, MigrationError> {
    let qmp = qemu.qmp(COMMAND_TIMEOUT)?;
    qmp.execute("stop", None, COMMAND_TIMEOUT)?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": MAX_BANDWIDTH })),
        COMMAND_TIMEOUT,
    )?;
    migrate_through_fd(qmp, "migrate", file)?;
    let info = wait_migration(qemu, deadline, SNAPSHOT_TIMEOUT)?;
    Ok(info["ram"]["transferred"].as_u64().unwrap_or(0))
}

/// Hands `file` to QEMU (`getfd`) and starts `command` (`migrate` or
/// `migrate-incoming`) on it: QEMU reads or writes the snapshot file directly.
fn migrate_through_fd(
    qmp: &mut crate::qmp::Qmp,
    command: &str,
    file: &File,
) -> Result<(), MigrationError> {
    qmp.execute_with_fd(
        "getfd",
        json!({ "fdname": FD_NAME }),
        file.as_fd(),
        COMMAND_TIMEOUT,
    )?;
    qmp.execute(
        command,
        Some(json!({ "uri": format!("fd:{FD_NAME}") })),
        COMMAND_TIMEOUT,
    )?;
    Ok(())
}

/// Loads `state` into a QEMU started with `-incoming defer` and continues the guest.
fn migrate_in(qemu: &mut Qemu, state: &Path, deadline: Instant) -> Result<(), MigrationError> {
    let file = File::open(state).map_err(|source| MigrationError::File {
        action: "open",
        path: state.to_path_buf(),
        source,
    })?;
    let timeout = deadline.saturating_duration_since(Instant::now());
    let qmp = qemu.qmp(timeout)?;
    migrate_through_fd(qmp, "migrate-incoming", &file)?;
    wait_migration(qemu, deadline, timeout)?;
    // The source was stopped when it was saved, so the loaded guest stays paused.
    qemu.qmp(COMMAND_TIMEOUT)?
        .execute("cont", None, COMMAND_TIMEOUT)?;
    Ok(())
}

/// Polls `query-migrate` (the same command reports an outgoing migration on the
/// source and the incoming one on the destination) until it completes, fails, the
/// deadline passes or QEMU dies. Returns the final report.
fn wait_migration(
    qemu: &mut Qemu,
    deadline: Instant,
    timeout: Duration,
) -> Result<Value, MigrationError> {
    loop {
        if let Some(reason) = qemu.dead_reason() {
            return Err(MigrationError::Died {
                reason,
                stderr: String::new(),
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let queried = qemu
            .qmp(COMMAND_TIMEOUT)
            .map_err(MigrationError::from)
            .and_then(|qmp| {
                let info = qmp.execute("query-migrate", None, remaining.min(COMMAND_TIMEOUT))?;
                // Migration and run-state events are not needed: the report says it all.
                qmp.take_events();
                Ok(info)
            });
        let info = match queried {
            Ok(info) => info,
            // A QEMU that exits mid-migration resets QMP a moment before its stdout
            // closes: give it that moment, then say why it ended.
            Err(error) => {
                if matches!(
                    error,
                    MigrationError::Qmp(QmpError::Closed { .. } | QmpError::Io { .. })
                ) {
                    qemu.wait_exit(EXIT_EVIDENCE_WAIT);
                }
                return Err(match qemu.dead_reason() {
                    Some(reason) => MigrationError::Died {
                        reason,
                        stderr: String::new(),
                    },
                    None => error,
                });
            }
        };
        let status = info["status"].as_str().unwrap_or("none").to_string();
        match status.as_str() {
            "completed" => return Ok(info),
            "failed" | "cancelled" => {
                let desc = info["error-desc"]
                    .as_str()
                    .unwrap_or("no reason given (see qemu.stderr)")
                    .to_string();
                return Err(MigrationError::Failed {
                    status,
                    desc,
                    stderr: String::new(),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(MigrationError::Timeout { timeout, status });
        }
        if let Err(stop) = crate::cancel::checkpoint() {
            return Err(MigrationError::Died {
                reason: format!("stopped waiting: {stop}"),
                stderr: String::new(),
            });
        }
        std::thread::sleep(MIGRATION_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_errors_name_their_evidence() {
        use crate::vm::{BootError, VmError};
        let error = VmError::Snapshot {
            vm: "fixture:base".into(),
            path: "/r/fixture-base.snap".into(),
            source: Box::new(MigrationError::Truncated {
                path: "/r/fixture-base.snap".into(),
                size: 10,
                sent: 20,
            }),
        };
        assert_eq!(
            error.to_string(),
            "VM fixture:base: snapshot to /r/fixture-base.snap: /r/fixture-base.snap holds \
             10 bytes but QEMU sent 20: the snapshot is truncated"
        );
        let error = BootError::Resume {
            vm: "a.lua#1".into(),
            source: Box::new(ResumeError {
                snapshot: "/r/f.snap".into(),
                source: MigrationError::Died {
                    reason: "QEMU exited".into(),
                    stderr: "qemu-system-x86_64: Unknown savevm section".into(),
                },
            }),
            console_log: "/r/vm3/console.log".into(),
            console_tail: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "VM a.lua#1: cannot resume from /r/f.snap: QEMU died during the migration: \
             QEMU exited; QEMU stderr: qemu-system-x86_64: Unknown savevm section"
        );
        assert_eq!(error.console_log(), Some(Path::new("/r/vm3/console.log")));
    }

    #[test]
    fn link_or_copy_keeps_the_bytes_after_the_original_goes() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("initrd.img");
        let kept = dir.path().join("f.initrd");
        fs::write(&original, b"cpio").unwrap();
        fs::write(&kept, b"stale").unwrap();
        link_or_copy(&original, &kept).unwrap();
        fs::remove_file(&original).unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"cpio");
        let target = dir.path().join("x");
        let missing = link_or_copy(&original, &target).unwrap_err().to_string();
        assert!(
            missing.starts_with(&format!("cannot keep the initrd as {}: ", target.display())),
            "{missing}"
        );
    }
}
