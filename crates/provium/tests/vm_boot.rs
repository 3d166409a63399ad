//! Real-VM tests: boot Debian's cloud kernel with the generated busybox initramfs
//! under TCG, and check the failure paths (bad kernel, bad initrd, panics, QEMU
//! errors) end quickly with evidence, leaving no QEMU behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use provium::vm::qemu::DiskFormat;
use provium::vm::{AgentChannel, BootError, Disk, ShutdownOutcome, Vm, VmConfig};

#[path = "common/vm.rs"]
mod vm_common;

use vm_common::{default_profile, run_dir};

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                found.push(pid);
            }
        }
    }
    found
}

fn boot_error(config: VmConfig) -> BootError {
    match Vm::boot(config, None) {
        Ok(vm) => panic!("VM {} booted but should have failed", vm.name()),
        Err(e) => e,
    }
}

#[test]
fn default_profile_boots_execs_and_shuts_down() {
    let dir = run_dir();
    let payload = dir.path().join("payload.txt");
    fs::write(&payload, "injected\n").unwrap();
    let mut config = VmConfig::new("boot-test", default_profile(), dir.path());
    config.files.push(provium::shim::InjectedFile {
        guest_path: "/opt/payload.txt".into(),
        host_path: payload,
    });
    let disk = dir.path().join("data.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    config.disks.push(Disk {
        path: disk,
        format: DiskFormat::Raw,
        readonly: false,
    });
    let start = Instant::now();
    let mut vm = Vm::boot(config, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()));
    eprintln!("booted in {:?} over {:?}", start.elapsed(), vm.channel());

    let out = vm.exec("echo hi; echo err >&2; exit 3").unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, 3);
    assert_eq!(vm.read_file("/opt/payload.txt").unwrap(), b"injected\n");
    vm.write_file("/tmp/x", &[0, 1, 2, 255]).unwrap();
    assert_eq!(vm.exec("wc -c < /tmp/x").unwrap().stdout, b"4\n");
    let mounts = vm.exec("cat /proc/mounts").unwrap();
    assert!(String::from_utf8_lossy(&mounts.stdout).contains("/sys"));
    assert!(!vm.dmesg(Some("Linux version")).unwrap().is_empty());
    vm.mount_vfs().unwrap();
    vm.mount_vfs().unwrap();
    let mounts = vm.exec("cat /proc/mounts").unwrap();
    assert!(String::from_utf8_lossy(&mounts.stdout).contains("securityfs"));

    let size = vm.exec("cat /sys/block/vda/size").unwrap();
    assert_eq!(size.stdout, b"2048\n", "1 MiB disk as /dev/vda");
    let status = vm
        .qmp(Duration::from_secs(5))
        .unwrap()
        .execute("query-status", None, Duration::from_secs(5))
        .unwrap();
    assert_eq!(status["status"], "running");

    let console = vm.console_log().to_path_buf();
    assert_eq!(vm.shutdown(), ShutdownOutcome::PoweredOff);
    assert!(vm.exec("true").is_err(), "a shut-down VM refuses commands");
    assert!(fs::read_to_string(console)
        .unwrap()
        .contains("Linux version"));
}

#[test]
fn guest_panic_ends_the_wait_at_once_and_drop_leaves_no_qemu() {
    let dir = run_dir();
    let vm = Vm::boot(
        VmConfig::new("panic-test", default_profile(), dir.path()),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()));
    assert!(
        !processes_mentioning(dir.path()).is_empty(),
        "QEMU is running"
    );
    let start = Instant::now();
    let err = vm
        .exec("echo c > /proc/sysrq-trigger")
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{err}"
    );
    let console = fs::read_to_string(vm.console_log()).unwrap();
    assert!(console.contains("Kernel panic - not syncing"), "{console}");
    drop(vm);
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "QEMU survived drop"
    );
}

#[test]
fn boot_panic_fails_fast_with_the_console_tail() {
    let dir = run_dir();
    let mut profile = default_profile();
    // The last rdinit= wins: the kernel cannot run it, finds no root and panics.
    profile.append = "rdinit=/does/not/exist".into();
    let start = Instant::now();
    let err = boot_error(VmConfig::new("bootpanic", profile, dir.path()));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, BootError::KernelPanic { .. }), "{err}");
    assert!(
        err.to_string().contains("Kernel panic - not syncing"),
        "{err}"
    );
    assert!(err.console_tail().unwrap().contains("Kernel panic"));
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "QEMU left behind"
    );
}

#[test]
fn qemu_start_failure_carries_its_stderr() {
    let dir = run_dir();
    let not_qcow2 = dir.path().join("disk.img");
    fs::write(&not_qcow2, vec![0u8; 65536]).unwrap();
    let mut config = VmConfig::new("badqemu", default_profile(), dir.path());
    config.disks.push(Disk {
        path: not_qcow2,
        format: DiskFormat::Qcow2,
        readonly: false,
    });
    let start = Instant::now();
    let err = boot_error(config);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let message = err.to_string();
    assert!(matches!(err, BootError::QemuExited { .. }), "{message}");
    assert!(message.contains("QEMU stderr:"), "{message}");
    assert!(message.contains("qcow2"), "{message}");

    let mut config = VmConfig::new("noqemu", default_profile(), dir.path());
    config.qemu = PathBuf::from("/nonexistent/qemu-system-x86_64");
    let message = boot_error(config).to_string();
    assert!(message.contains("qemu-system-x86"), "{message}");
}

#[test]
fn bad_kernels_and_initrds_are_named() {
    let dir = run_dir();
    let mut profile = default_profile();
    profile.name = "broken".into();
    profile.kernel = dir.path().join("missing-bzImage");
    let message = boot_error(VmConfig::new("k1", profile.clone(), dir.path())).to_string();
    assert!(message.contains("profile 'broken'"), "{message}");
    assert!(message.contains("missing-bzImage"), "{message}");

    let vmlinux = dir.path().join("vmlinux");
    fs::write(&vmlinux, b"\x7fELF\x02\x01\x01not a bzImage at all").unwrap();
    profile.kernel = vmlinux;
    let message = boot_error(VmConfig::new("k2", profile.clone(), dir.path())).to_string();
    assert!(
        message.contains("vmlinux ELF without a PVH entry note")
            && message.contains("CONFIG_PVH=y"),
        "{message}"
    );

    let mut profile = default_profile();
    profile.name = "rawdisk".into();
    let disk = dir.path().join("root.img");
    fs::write(&disk, vec![0u8; 4096]).unwrap();
    profile.initrd = Some(disk);
    let message = boot_error(VmConfig::new("i1", profile, dir.path())).to_string();
    assert!(message.contains("profile 'rawdisk'"), "{message}");
    assert!(message.contains("root.img"), "{message}");
    assert!(message.contains("not a cpio archive"), "{message}");
}

#[test]
fn agent_falls_back_to_the_uart_without_a_virtio_console() {
    let dir = run_dir();
    let mut profile = default_profile();
    // The agent cannot load virtio_console, so it serves on ttyS1.
    profile.append = "module_blacklist=virtio_console".into();
    let mut config = VmConfig::new("uart-test", profile, dir.path());
    // Without flow control the guest tty dropped bytes of a large write and the
    // call waited for the rest of its frame until this deadline.
    config.op_timeout = Duration::from_secs(180);
    let vm = Vm::boot(config, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", e.console_tail().unwrap_or_default()));
    assert_eq!(vm.channel(), AgentChannel::Uart);
    assert_eq!(vm.exec("echo over-uart").unwrap().stdout, b"over-uart\n");

    // 8 MiB of a non-repeating pattern, so a dropped or repeated byte shows.
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect();
    let start = Instant::now();
    vm.write_file("/tmp/big.bin", &data)
        .unwrap_or_else(|e| panic!("8 MiB write over the UART: {e}"));
    let wrote = start.elapsed();
    let start = Instant::now();
    let back = vm
        .read_file("/tmp/big.bin")
        .unwrap_or_else(|e| panic!("8 MiB read over the UART: {e}"));
    let read = start.elapsed();
    let mb = data.len() as f64 / 1e6;
    eprintln!(
        "uart 8 MiB: write {wrote:?} ({:.2} MB/s), read {read:?} ({:.2} MB/s)",
        mb / wrote.as_secs_f64(),
        mb / read.as_secs_f64()
    );
    assert!(
        back == data,
        "8 MiB read back differs from what was written"
    );
    let overruns = vm.exec("cat /proc/tty/driver/serial").unwrap().stdout;
    eprintln!("{}", String::from_utf8_lossy(&overruns));
    let ttys1 = String::from_utf8_lossy(&overruns)
        .lines()
        .find(|l| l.starts_with("1:"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(!ttys1.contains(" bo:"), "ttyS1 buffer overruns: {ttys1}");
}
