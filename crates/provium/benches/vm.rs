//! `scripts/bench vm`: cold boot against a bare QEMU boot, agent round trips, and
//! file transfers over virtio-serial and over the ttyS1 fallback against the raw
//! devices (`common/raw.rs`).
//!
//! Run with `cargo bench -p provium --bench vm`; `BENCH_RUNS` sets the run count.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use provium::shim::{write_concatenated, CpioWriter};
use provium::vm::{AgentChannel, Vm};
use provium_proto::{Request, Response, MAIN_CHANNEL};

use common::{batch_mean, median, ratio, raw, report, show, timed, Bench};

/// What the bare guest's `/init` prints before powering off.
const INIT_MARKER: &str = "BARE-INIT-RUNNING";
/// A bare boot that takes longer than this is stuck, not slow.
const BARE_BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// Round trips per timed batch.
const BATCH: u32 = 20;
/// A file transfer over virtio-serial: the 16 MiB cap.
const VIRTIO_BYTES: usize = 16 << 20;
/// A file transfer over the ttyS1 fallback.
const UART_BYTES: usize = 8 << 20;
/// The raw baselines: the bench port and tmpfs (long enough to reach a steady
/// rate), and the bare UART (0.5 MB/s: 4 MiB take several seconds).
const RAW_PORT_BYTES: usize = 128 << 20;
const RAW_UART_BYTES: usize = 4 << 20;
/// The guest's per-UART counters: bytes received, and overruns when non-zero.
const SERIAL_COUNTERS: &str = "/proc/tty/driver/serial";
/// SPEC targets.
const BOOT_RATIO_TARGET: f64 = 1.2;
const EXEC_TARGET: Duration = Duration::from_millis(20);
/// Transfer targets, as fractions of the raw baseline's rate: virtio-serial reads
/// against the raw port, writes against the slower of the raw port and tmpfs; the
/// fallback against the bare UART in the same direction.
const VIRTIO_TARGET: f64 = 0.5;
const UART_TARGET: f64 = 0.6;

type Section = fn(&Bench) -> Result<()>;

/// The sections, in order; `BENCH_SECTIONS` (comma-separated names) selects some.
/// `transfers` comes last because a failing fallback ends the bench.
const SECTIONS: [(&str, Section); 3] = [
    ("boot", boot_times),
    ("round-trips", round_trips),
    ("transfers", transfers),
];

fn main() -> Result<()> {
    let wanted = std::env::var("BENCH_SECTIONS").unwrap_or_default();
    let wanted: Vec<&str> = wanted.split(',').filter(|w| !w.is_empty()).collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !SECTIONS.iter().any(|(name, _)| name == *w))
    {
        bail!(
            "BENCH_SECTIONS: unknown section '{unknown}' (sections: boot, round-trips, transfers)"
        );
    }
    let bench = Bench::new("vm")?;
    for (name, section) in SECTIONS {
        if wanted.is_empty() || wanted.contains(&name) {
            section(&bench)?;
        }
    }
    Ok(())
}

/// Kills the bare QEMU if a measurement fails half-way.
struct BareQemu(Child);

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Times for one bare boot: to the init's first output, and to QEMU's exit.
struct BareBoot {
    to_init: Duration,
    to_exit: Duration,
}

/// The busybox initramfs of the default profile plus an `/init` that prints the
/// marker and powers off: the same kernel and userland as Provium's boot, without
/// the shim, the agent or the virtio modules.
fn bare_initrd(bench: &Bench) -> Result<std::path::PathBuf> {
    let mut init = CpioWriter::new(Vec::new());
    init.file(
        "/init",
        0o755,
        format!("#!/bin/sh\necho {INIT_MARKER}\npoweroff -f\n").as_bytes(),
    )?;
    let init = init.finish()?;
    let busybox = fs::read(&bench.resolved.initrd)
        .with_context(|| format!("reading {}", bench.resolved.initrd.display()))?;
    let path = bench.work.path().join("bare.cpio");
    write_concatenated(&path, &[&busybox, &init])?;
    Ok(path)
}

fn bare_boot(bench: &Bench, initrd: &Path) -> Result<BareBoot> {
    let start = Instant::now();
    let mut child = Command::new(&bench.qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(bench.accel.qemu_args())
        .args(["-m", "512M", "-smp", "1", "-kernel"])
        .arg(&bench.resolved.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1", "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bench.qemu.display()))?;
    let console = child.stdout.take().context("QEMU stdout")?;
    let mut qemu = BareQemu(child);
    // The reader reports the marker, then the end of the console (QEMU exiting).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut console = BufReader::new(console);
        let mut line = String::new();
        while console.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains(INIT_MARKER) {
                let _ = tx.send(Some(start.elapsed()));
            }
            line.clear();
        }
        let _ = tx.send(None);
    });
    let mut to_init = None;
    loop {
        let left = BARE_BOOT_DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(Some(at)) => to_init = Some(at),
            Ok(None) => break,
            Err(_) => bail!("bare QEMU boot did not finish within {BARE_BOOT_DEADLINE:?}"),
        }
    }
    let status = qemu.0.wait()?;
    let to_exit = start.elapsed();
    match to_init {
        Some(to_init) if status.success() => Ok(BareBoot { to_init, to_exit }),
        Some(_) => bail!("bare QEMU exited with {status}"),
        None => bail!("bare QEMU exited ({status}) without the init's output"),
    }
}

fn boot_times(bench: &Bench) -> Result<()> {
    let initrd = bare_initrd(bench)?;
    let (mut bare_init, mut bare_exit, mut provium) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..bench.runs {
        let bare = bare_boot(bench, &initrd)?;
        bare_init.push(bare.to_init);
        bare_exit.push(bare.to_exit);
        let (took, mut vm) = timed(|| {
            bench.boot(
                &format!("boot{run}"),
                bench.profile(""),
                AgentChannel::VirtioSerial,
            )
        })?;
        provium.push(took);
        vm.shutdown();
    }
    println!("boot (cold: fresh run directory, combined initrd rebuilt each time)");
    report("bare QEMU to /init output (baseline)", &bare_init, "");
    report("bare QEMU to /init poweroff (QEMU exit)", &bare_exit, "");
    report(
        "provium cold boot to ready agent",
        &provium,
        &ratio(&provium, &bare_init, Some(BOOT_RATIO_TARGET)),
    );
    Ok(())
}

fn exec_true(vm: &Vm) -> Result<()> {
    let out = vm.exec("true")?;
    if !out.ok() {
        bail!("exec(\"true\") exited {}", out.exit_code);
    }
    Ok(())
}

fn ping(vm: &Vm) -> Result<()> {
    match vm
        .link()
        .call(MAIN_CHANNEL, &Request::Ping, vm.op_timeout())?
    {
        Response::Pong => Ok(()),
        other => bail!("ping answered {other:?}"),
    }
}

/// Round trips on one VM: `exec("true")` against `Ping` (the cheapest request: the
/// channel and the agent's dispatch, no work), and the guest's own cost of starting
/// a process from a shell, which is what `exec` adds on the agent's side.
fn round_trips(bench: &Bench) -> Result<()> {
    let vm = bench.boot("rtt", bench.profile(""), AgentChannel::VirtioSerial)?;
    let spawn_loop = format!("i=0; while [ $i -lt {BATCH} ]; do /bin/true; i=$((i+1)); done");
    let (mut exec, mut pings, mut guest_spawn) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.runs {
        exec.push(batch_mean(BATCH, || exec_true(&vm))?);
        pings.push(batch_mean(BATCH, || ping(&vm))?);
        let (took, out) = timed(|| Ok(vm.exec(&spawn_loop)?))?;
        if !out.ok() {
            bail!("the spawn loop exited {}", out.exit_code);
        }
        guest_spawn.push(took / BATCH);
    }
    println!("round trips over virtio-serial (mean of {BATCH} per run)");
    report("ping (baseline: channel + agent dispatch)", &pings, "");
    let exec_target = if median(&exec) <= EXEC_TARGET {
        format!("target <= {}: met", show(EXEC_TARGET))
    } else {
        format!(
            "target <= {}: MISSED by {}",
            show(EXEC_TARGET),
            show(median(&exec) - EXEC_TARGET)
        )
    };
    report(
        "exec(\"true\")",
        &exec,
        &format!("{}; {exec_target}", ratio(&exec, &pings, None)),
    );
    report(
        "guest alone: sh runs /bin/true (per process)",
        &guest_spawn,
        "",
    );
    let agent_side = median(&exec).saturating_sub(median(&pings));
    println!(
        "  exec - ping = {} spent starting the shell in the guest; {} is the channel",
        show(agent_side),
        show(median(&pings))
    );
    drop(vm);
    Ok(())
}

/// A pattern no layer could shortcut (not all zeros) and that shows misplaced bytes.
fn payload(bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

/// Megabytes (10^6 bytes) per second for `bytes` moved in the median of `samples`.
fn mb_per_s(bytes: usize, samples: &[Duration]) -> f64 {
    bytes as f64 / median(samples).as_secs_f64() / 1e6
}

/// A measured transfer: its size and the time of each run.
struct Rate<'a> {
    bytes: usize,
    samples: &'a [Duration],
}

impl Rate<'_> {
    fn mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.samples)
    }
}

/// One report line for a transfer: its rate, and with a baseline, the ratio of the
/// rates and whether it reaches `target` (a fraction of the baseline's rate).
fn report_rate(label: &str, rate: &Rate<'_>, baseline: Option<(&str, f64, f64)>) {
    let extra = match baseline {
        None => format!("{:.2} MB/s", rate.mb_s()),
        Some((name, base_mb_s, target)) => {
            let r = rate.mb_s() / base_mb_s;
            let verdict = if r >= target {
                format!("target >= {target}: met")
            } else {
                format!("target >= {target}: MISSED")
            };
            format!(
                "{:.2} MB/s = {r:.2} x {name} ({base_mb_s:.2} MB/s); {verdict}",
                rate.mb_s()
            )
        }
    };
    report(label, rate.samples, &extra);
}

/// Writes then reads back `data`; checks the bytes survived.
fn transfer(vm: &Vm, data: &[u8]) -> Result<(Duration, Duration)> {
    let path = "/tmp/bench.bin";
    let (wrote, ()) = timed(|| Ok(vm.write_file(path, data)?))?;
    let (read, back) = timed(|| Ok(vm.read_file(path)?))?;
    if back != data {
        bail!(
            "VM {}: read_file returned {} bytes that differ from the {} written",
            vm.name(),
            back.len(),
            data.len()
        );
    }
    Ok((wrote, read))
}

/// The samples of one figure, by name.
#[derive(Default)]
struct Samples {
    port_out: Vec<Duration>,
    port_in: Vec<Duration>,
    tmpfs: Vec<Duration>,
    v_write: Vec<Duration>,
    v_read: Vec<Duration>,
    uart_out: Vec<Duration>,
    uart_in: Vec<Duration>,
    u_write: Vec<Duration>,
    u_read: Vec<Duration>,
    u_exec: Vec<Duration>,
}

/// File transfers against the raw devices, interleaved run by run on two VMs: one
/// whose agent serves on virtio-serial (it also carries the raw baselines: a second,
/// hot-plugged virtio-serial port, `dd` into tmpfs, and its idle ttyS1), one forced
/// onto the ttyS1 fallback (virtio_console blacklisted, as `tests/vm_boot.rs` does).
/// A failed fallback transfer ends the fallback runs only; the figures are printed,
/// then its evidence, and the bench fails.
fn transfers(bench: &Bench) -> Result<()> {
    let data = payload(VIRTIO_BYTES);
    let uart_data = &data[..UART_BYTES];
    let mut virtio = bench.boot("xfer-virtio", bench.profile(""), AgentChannel::VirtioSerial)?;
    let mut port = raw::BenchPort::attach(&mut virtio, bench.work.path())?;
    let mut raw_uart = raw::RawUart::attach(&virtio)?;
    let uart = bench.boot(
        "xfer-uart",
        bench.profile("module_blacklist=virtio_console"),
        AgentChannel::Uart,
    )?;
    // The guest's ttyS1 counters on the console every few seconds: if a transfer
    // stalls, they show whether bytes were lost (`bo`, `oe`) or are still arriving.
    uart.exec(&format!(
        "(while sleep 5; do grep '^1:' {SERIAL_COUNTERS} > /dev/console; done) >/dev/null 2>&1 &"
    ))?;
    let mut s = Samples::default();
    let mut uart_failure = None;
    // Each sample also goes to stderr as it is taken: a run takes minutes.
    let note = |label: &str, bytes: usize, took: Duration| {
        eprintln!(
            "  {label}: {} = {:.2} MB/s",
            show(took),
            bytes as f64 / took.as_secs_f64() / 1e6
        );
        took
    };
    for run in 1..=bench.runs {
        eprintln!("transfers: run {run} of {}", bench.runs);
        let took = port.guest_to_host(&virtio, RAW_PORT_BYTES)?;
        s.port_out.push(note("raw port out", RAW_PORT_BYTES, took));
        let took = port.host_to_guest(&virtio, RAW_PORT_BYTES)?;
        s.port_in.push(note("raw port in", RAW_PORT_BYTES, took));
        let took = raw::tmpfs_write(&virtio, RAW_PORT_BYTES)?;
        s.tmpfs.push(note("tmpfs dd", RAW_PORT_BYTES, took));
        let (w, r) = transfer(&virtio, &data)?;
        s.v_write.push(note("write_file", VIRTIO_BYTES, w));
        s.v_read.push(note("read_file", VIRTIO_BYTES, r));
        let took = raw_uart.guest_to_host(&virtio, RAW_UART_BYTES)?;
        s.uart_out.push(note("raw ttyS1 out", RAW_UART_BYTES, took));
        let took = raw_uart.host_to_guest(&virtio, RAW_UART_BYTES)?;
        s.uart_in.push(note("raw ttyS1 in", RAW_UART_BYTES, took));
        if uart_failure.is_some() {
            continue;
        }
        let uart_run = transfer(&uart, uart_data)
            .and_then(|wr| Ok((wr, batch_mean(BATCH, || exec_true(&uart))?)));
        match uart_run {
            Ok(((w, r), e)) => {
                s.u_write.push(note("ttyS1 write_file", UART_BYTES, w));
                s.u_read.push(note("ttyS1 read_file", UART_BYTES, r));
                s.u_exec.push(e);
            }
            Err(e) => uart_failure = Some(e),
        }
    }
    let rate = |bytes, samples| Rate { bytes, samples };
    let port_out = rate(RAW_PORT_BYTES, &s.port_out);
    let tmpfs = rate(RAW_PORT_BYTES, &s.tmpfs);
    println!("raw baselines (MB = 10^6 bytes; the time per transfer)");
    report_rate(
        "virtio-serial guest->host: dd 128 MiB, 2nd port",
        &port_out,
        None,
    );
    report_rate(
        "virtio-serial host->guest: dd 128 MiB, 2nd port",
        &rate(RAW_PORT_BYTES, &s.port_in),
        None,
    );
    report_rate("guest dd 128 MiB into tmpfs", &tmpfs, None);
    let uart_out = rate(RAW_UART_BYTES, &s.uart_out);
    let uart_in = rate(RAW_UART_BYTES, &s.uart_in);
    report_rate("ttyS1 guest->host: dd 4 MiB", &uart_out, None);
    report_rate("ttyS1 host->guest: dd 4 MiB", &uart_in, None);
    println!("16 MiB transfers over virtio-serial");
    let write_base = if tmpfs.mb_s() < port_out.mb_s() {
        ("tmpfs dd", tmpfs.mb_s())
    } else {
        ("raw port", port_out.mb_s())
    };
    report_rate(
        "write_file",
        &rate(VIRTIO_BYTES, &s.v_write),
        Some((write_base.0, write_base.1, VIRTIO_TARGET)),
    );
    report_rate(
        "read_file",
        &rate(VIRTIO_BYTES, &s.v_read),
        Some(("raw port", port_out.mb_s(), VIRTIO_TARGET)),
    );
    let good = if uart_failure.is_some() {
        format!(" ({} good runs)", s.u_write.len())
    } else {
        String::new()
    };
    if !s.u_write.is_empty() {
        println!("8 MiB transfers over the ttyS1 fallback{good}");
        report_rate(
            "write_file",
            &rate(UART_BYTES, &s.u_write),
            Some(("raw ttyS1 in", uart_in.mb_s(), UART_TARGET)),
        );
        report_rate(
            "read_file",
            &rate(UART_BYTES, &s.u_read),
            Some(("raw ttyS1 out", uart_out.mb_s(), UART_TARGET)),
        );
        report(
            &format!("exec(\"true\") over ttyS1 (mean of {BATCH})"),
            &s.u_exec,
            "",
        );
    }
    if let Some(error) = uart_failure {
        println!(
            "  ttyS1 fallback FAILED in run {}: {error:#}",
            s.u_write.len() + 1
        );
        let console = fs::read_to_string(uart.console_log()).unwrap_or_default();
        for line in console.lines().filter(|l| l.contains("provium-agent")) {
            println!("    console: {line}");
        }
        let counters: Vec<&str> = console.lines().filter(|l| l.starts_with("1:")).collect();
        for line in &counters[counters.len().saturating_sub(2)..] {
            println!("    guest ttyS1 counters (latest): {line}");
        }
        return Err(error.context("the ttyS1 fallback transfers failed (figures above)"));
    }
    // The guests' own count of bytes received and lost (overruns) on ttyS1.
    for (which, vm) in [("fallback", &uart), ("raw", &virtio)] {
        let serial = vm.exec(&format!("cat {SERIAL_COUNTERS}"))?;
        for line in String::from_utf8_lossy(&serial.stdout).lines() {
            if line.starts_with("1:") {
                println!("  guest ttyS1 counters ({which}): {line}");
            }
        }
    }
    Ok(())
}
