//! Boot-time measurement (ignored by default; run with `--ignored --nocapture`):
//! Provium's cold boot to a ready agent against a bare QEMU boot of the same kernel
//! with a busybox initramfs whose `/init` powers off. Medians of 5 runs each.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use provium::shim::{write_concatenated, CpioWriter};
use provium::vm::{default_profile, BootProfile, Vm, VmConfig};

const RUNS: usize = 5;
const INIT_MARKER: &str = "BARE-INIT-RUNNING";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
#[ignore = "measurement: takes about a minute"]
fn cold_boot_versus_bare_qemu() {
    let resolved = default_profile::resolve(&default_profile::cache_dir()).unwrap();
    let work = tempfile::Builder::new()
        .prefix("pvbench")
        .tempdir_in("/tmp")
        .unwrap();

    let mut init = CpioWriter::new(Vec::new());
    init.file(
        "/init",
        0o755,
        format!("#!/bin/sh\necho {INIT_MARKER}\npoweroff -f\n").as_bytes(),
    )
    .unwrap();
    let init = init.finish().unwrap();
    let busybox = fs::read(&resolved.initrd).unwrap();
    let bare_initrd = work.path().join("bare.cpio");
    write_concatenated(&bare_initrd, &[&busybox, &init]).unwrap();

    // Interleaved, so that load from other processes affects both sides alike.
    let (mut bare, mut bare_init, mut provium) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
                "-display",
                "none",
            ])
            .args(["-accel", "tcg", "-cpu", "max", "-m", "512M", "-smp", "1"])
            .arg("-kernel")
            .arg(&resolved.kernel)
            .arg("-initrd")
            .arg(&bare_initrd)
            .args(["-append", "console=ttyS0 panic=-1", "-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut console = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while console.read_line(&mut line).unwrap() > 0 {
            if line.contains(INIT_MARKER) {
                bare_init.push(start.elapsed());
            }
            line.clear();
        }
        assert!(child.wait().unwrap().success());
        bare.push(start.elapsed());

        // A fresh run directory each time: the combined initrd is rebuilt (cold).
        let run_dir = work.path().join(format!("r{run}"));
        fs::create_dir(&run_dir).unwrap();
        let config = VmConfig::new("bench", BootProfile::from_default(&resolved), &run_dir);
        let start = Instant::now();
        let mut vm = Vm::boot(config, None).unwrap();
        provium.push(start.elapsed());
        vm.shutdown();
    }

    let (bare_median, provium_median) = (median(bare.clone()), median(provium.clone()));
    eprintln!("bare QEMU boot to /init poweroff: {bare:?} median {bare_median:?}");
    eprintln!(
        "bare QEMU boot to /init output: {bare_init:?} median {:?}",
        median(bare_init.clone())
    );
    eprintln!("provium cold boot to ready agent: {provium:?} median {provium_median:?}");
    eprintln!(
        "ratio: {:.2}",
        provium_median.as_secs_f64() / bare_median.as_secs_f64()
    );
}
