//! Real-VM tests of snapshots: boot the default profile under TCG, save it, resume it
//! several times, and check the resumed VMs are complete and independent; a damaged
//! snapshot fails fast with QEMU's own evidence.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use provium::vm::snapshot::Snapshot;
use provium::vm::{BootError, Vm, VmConfig, VmError};
use provium_proto::{Request, Response, MAIN_CHANNEL};

#[path = "common/vm.rs"]
mod vm_common;

use vm_common::{default_profile, run_dir};

fn boot(name: &str, dir: &Path) -> Vm {
    let mut config = VmConfig::new(name, default_profile(), dir);
    config.memory_mib = 256;
    Vm::boot(config, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()))
}

fn resume(snapshot: &Snapshot, dir: &Path, name: &str) -> Vm {
    Vm::resume(snapshot, dir, name, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()))
}

fn stdout(vm: &Vm, cmd: &str) -> String {
    let out = vm.exec(cmd).unwrap();
    assert!(out.ok(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A lease that records when it is released.
struct Lease(std::sync::mpsc::Sender<()>);

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn resumed_vms_share_the_saved_state_and_nothing_else() {
    let dir = run_dir();
    let cold_start = Instant::now();
    let mut base = boot("base", dir.path());
    let cold = cold_start.elapsed();
    base.write_file("/tmp/from-fixture", b"prepared\n").unwrap();
    base.mount_vfs().unwrap();
    // A daemon started before the snapshot keeps running in every resumed VM.
    assert!(base.exec("sleep 1000 &").unwrap().ok());

    let state = dir.path().join("base.snap");
    let snapshot = base.snapshot(&state).unwrap();
    assert!(!base.is_running(), "the source VM ends with its snapshot");
    assert!(matches!(
        base.exec("true"),
        Err(VmError::Stopped { op: "exec", .. })
    ));
    assert_eq!(fs::metadata(&state).unwrap().len(), snapshot.size());
    assert!(snapshot.initrd().exists());
    assert_eq!((snapshot.memory_mib(), snapshot.cpus()), (256, 1));
    assert_eq!(snapshot.source_vm(), "base");

    let (released_tx, released) = std::sync::mpsc::channel();
    let resume_start = Instant::now();
    let mut first = Vm::resume(
        &snapshot,
        dir.path(),
        "first",
        Some(Box::new(Lease(released_tx))),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()));
    let resumed = resume_start.elapsed();
    let second = resume(&snapshot, dir.path(), "second");
    assert_ne!(first.console_log(), second.console_log());
    eprintln!(
        "snapshot: {} bytes in {:?}; cold boot {cold:?}; resume {resumed:?} ({:.2} x cold)",
        snapshot.size(),
        snapshot.took(),
        resumed.as_secs_f64() / cold.as_secs_f64()
    );

    for vm in [&first, &second] {
        assert_eq!(vm.read_file("/tmp/from-fixture").unwrap(), b"prepared\n");
        assert!(stdout(vm, "cat /proc/mounts").contains("securityfs"));
        assert!(stdout(vm, "ps").contains("sleep 1000"));
    }
    first.write_file("/tmp/only-first", b"1").unwrap();
    assert!(!second.exec("test -e /tmp/only-first").unwrap().ok());
    second.write_file("/tmp/from-fixture", b"changed").unwrap();
    assert_eq!(first.read_file("/tmp/from-fixture").unwrap(), b"prepared\n");

    // Workers, jobs and syscalls work on a resumed VM (workers created after it).
    let link = first.link();
    let timeout = Duration::from_secs(30);
    let Response::Spawned { channel, pid } = link
        .call(MAIN_CHANNEL, &Request::Spawn { thread: false }, timeout)
        .unwrap()
    else {
        panic!("spawn did not answer Spawned");
    };
    let getpid = Request::Syscall {
        nr: 39,
        args: vec![],
        bufs: vec![],
        ptrs: vec![],
    };
    match link.call(channel, &getpid, timeout).unwrap() {
        Response::Syscall { ret, .. } => assert_eq!(ret, i64::from(pid)),
        other => panic!("getpid answered {other:?}"),
    }
    let Response::Job { id, .. } = link
        .call(
            MAIN_CHANNEL,
            &Request::Background {
                cmd: "echo job-out".into(),
            },
            timeout,
        )
        .unwrap()
    else {
        panic!("background did not answer Job");
    };
    match link
        .call(
            MAIN_CHANNEL,
            &Request::JobWait {
                id,
                timeout_ms: 10_000,
            },
            timeout,
        )
        .unwrap()
    {
        Response::JobStatus {
            running, stdout, ..
        } => {
            assert!(!running);
            assert_eq!(stdout, b"job-out\n");
        }
        other => panic!("job_wait answered {other:?}"),
    }

    // A resumed VM can be saved in turn (a fixture built on another fixture).
    first.write_file("/tmp/nested", b"second layer").unwrap();
    let nested = first.snapshot(&dir.path().join("nested.snap")).unwrap();
    assert!(
        released.try_recv().is_ok(),
        "the lease goes with the snapshotted VM"
    );
    drop(snapshot);
    assert!(!state.exists(), "dropping a snapshot deletes its file");
    let third = resume(&nested, dir.path(), "third");
    assert_eq!(third.read_file("/tmp/nested").unwrap(), b"second layer");
    assert_eq!(third.read_file("/tmp/from-fixture").unwrap(), b"prepared\n");
    assert!(third.exec("test -e /tmp/only-first").unwrap().ok());
    let nested_files = [nested.path().to_path_buf(), nested.initrd().to_path_buf()];
    drop(third);
    drop(nested);
    for file in nested_files {
        assert!(!file.exists(), "{} outlived its snapshot", file.display());
    }
}

#[test]
fn a_truncated_snapshot_fails_the_resume_with_qemu_evidence() {
    let dir = run_dir();
    let mut base = boot("base", dir.path());
    let snapshot = base
        .snapshot(&dir.path().join("base.snap"))
        .expect("snapshot");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(snapshot.path())
        .unwrap();
    file.set_len(snapshot.size() / 2).unwrap();
    let start = Instant::now();
    let error = match Vm::resume(&snapshot, dir.path(), "broken", None) {
        Ok(_) => panic!("a truncated snapshot resumed"),
        Err(e) => e,
    };
    assert!(start.elapsed() < Duration::from_secs(20), "{error}");
    let message = error.to_string();
    assert!(
        matches!(error, BootError::Resume { .. }),
        "unexpected error: {message}"
    );
    assert!(
        message.starts_with(&format!(
            "VM broken: cannot resume from {}: ",
            snapshot.path().display()
        )),
        "{message}"
    );
    assert!(message.contains("QEMU stderr: "), "{message}");
    eprintln!("{message}");
    assert!(error.console_log().is_some());
}

#[test]
fn snapshot_of_a_stopped_vm_is_refused() {
    let dir = run_dir();
    let mut vm = boot("gone", dir.path());
    vm.kill();
    let path = dir.path().join("gone.snap");
    let error = vm.snapshot(&path).expect_err("a killed VM cannot be saved");
    assert!(
        matches!(error, VmError::Stopped { op: "snapshot", .. }),
        "{error}"
    );
    assert!(!path.exists());
}
