//! Raw baselines for the transfer figures, measured on the same VM in the same run:
//! what the emulated devices move without the agent.
//!
//! - A second virtio-serial port, hot-plugged through QMP for the bench only
//!   (`chardev-add` of a socket in the bench's directory, `device_add` of a
//!   `virtserialport` on the VM's `vser0` bus): the guest `dd`s into it while the host
//!   counts what arrives, and the host writes into it while the guest `dd`s it to
//!   `/dev/null`.
//! - `dd` into tmpfs: what the guest's file writes cost without any channel.
//! - The bare ttyS1 UART of a VM whose agent serves on virtio-serial (the port is
//!   idle there): the guest `dd`s into it while the host counts, and the host writes
//!   into it while the guest `dd`s it to `/dev/null`. The same emulated 8250 and guest
//!   driver carry the fallback's transfers; only the agent and its flow control are
//!   missing.
//!
//! Every figure is taken on the host's clock, from the moment the host starts the
//! transfer (sends the command, or writes the first byte) to the moment it is over
//! (the last byte arrives, or the guest's reader exits).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use provium::vm::client::Job;
use provium::vm::Vm;
use serde_json::json;

/// The bench port's name in the guest (`/sys/class/virtio-ports/*/name`).
const PORT_NAME: &str = "org.provium.bench.0";
/// How long QMP commands and the guest's discovery of the new port may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A raw transfer that takes longer is stuck (at 0.5 MB/s, 8 MiB takes 17 s).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(180);
/// The guest's `dd` block size, as in the figures this baseline replaces.
const DD_BLOCK: usize = 64 * 1024;
/// The guest's block size when writing into the UART (its transmit buffer is 4 KiB).
const UART_BLOCK: usize = 4096;

/// A host socket that counts the bytes arriving on it, on its own thread.
struct Counter {
    /// Each time a transfer's bytes have all arrived: when the last one did.
    done: mpsc::Receiver<Result<Instant>>,
    /// How many bytes the next transfer has, sent before it starts.
    expect: mpsc::Sender<usize>,
}

impl Counter {
    fn start(mut stream: UnixStream) -> Counter {
        let (expect, expected) = mpsc::channel::<usize>();
        let (finished, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            for mut left in expected {
                let result = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break Err(anyhow::anyhow!("the socket closed")),
                        Ok(n) => {
                            left = left.saturating_sub(n);
                            if left == 0 {
                                break Ok(Instant::now());
                            }
                        }
                        Err(e) => break Err(e.into()),
                    }
                };
                let failed = result.is_err();
                if finished.send(result).is_err() || failed {
                    return;
                }
            }
        });
        Counter { done, expect }
    }

    /// Runs `start` (which makes the guest send `bytes`) and returns how long it took
    /// from the call until the last byte arrived.
    fn time(&self, bytes: usize, start: impl FnOnce() -> Result<()>) -> Result<Duration> {
        self.expect
            .send(bytes)
            .context("the counting thread ended")?;
        let began = Instant::now();
        start()?;
        let last = self
            .done
            .recv_timeout(TRANSFER_DEADLINE)
            .context("the bytes did not all arrive in time")??;
        Ok(last - began)
    }
}

/// Writes `bytes` of a pattern into `stream` (the guest's side reads them).
fn flood(stream: &mut UnixStream, bytes: usize) -> Result<()> {
    let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len());
        stream.write_all(&block[..n])?;
        left -= n;
    }
    Ok(())
}

/// Waits until a background job has printed `marker` on its stderr (its reader is
/// set up), then runs `feed`, then waits for the job to end; returns the time from
/// the start of `feed` to the job's end.
fn time_reader(vm: &Vm, job: Job, feed: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let client = vm.client();
    let ready_by = Instant::now() + SETUP_TIMEOUT;
    loop {
        let status = client.job_wait(job.id, Duration::ZERO)?;
        if status.stderr.starts_with(b"ready") {
            break;
        }
        if !status.running {
            bail!(
                "the guest's reader ended before it was ready: exit {}, {}",
                status.exit_code,
                String::from_utf8_lossy(&status.stderr)
            );
        }
        if Instant::now() > ready_by {
            bail!("the guest's reader was not ready within {SETUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let began = Instant::now();
    feed()?;
    let status = client.job_wait(job.id, TRANSFER_DEADLINE)?;
    let took = began.elapsed();
    if status.running {
        let _ = client.job_kill(job.id);
        bail!("the guest's reader did not get every byte within {TRANSFER_DEADLINE:?}");
    }
    if status.exit_code != 0 {
        bail!(
            "the guest's reader exited {}: {}",
            status.exit_code,
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let _ = client.job_kill(job.id);
    Ok(took)
}

/// Runs `cmd` in the guest and fails unless it exits 0.
fn run(vm: &Vm, cmd: &str) -> Result<()> {
    let out = vm.exec(cmd)?;
    if !out.ok() {
        bail!(
            "`{cmd}` exited {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The bench's own virtio-serial port on a VM.
pub struct BenchPort {
    /// The guest's device node for the port.
    device: String,
    stream: UnixStream,
    counter: Counter,
}

impl BenchPort {
    /// Hot-plugs the port (its chardev a socket in `dir`), connects to it and finds
    /// its device node in the guest.
    pub fn attach(vm: &mut Vm, dir: &Path) -> Result<BenchPort> {
        let socket: PathBuf = dir.join("bench-port.sock");
        let qmp = vm.qmp(SETUP_TIMEOUT)?;
        qmp.execute(
            "chardev-add",
            Some(json!({
                "id": "benchport",
                "backend": { "type": "socket", "data": {
                    "addr": { "type": "unix", "data": { "path": socket } },
                    "server": true, "wait": false } }
            })),
            SETUP_TIMEOUT,
        )
        .context("QMP chardev-add for the bench port")?;
        qmp.execute(
            "device_add",
            Some(json!({
                "driver": "virtserialport", "bus": "vser0.0", "chardev": "benchport",
                "name": PORT_NAME, "id": "benchport0"
            })),
            SETUP_TIMEOUT,
        )
        .context("QMP device_add for the bench port")?;
        let stream = UnixStream::connect(&socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let find = format!(
            "for d in /sys/class/virtio-ports/*; do \
             [ \"$(cat $d/name 2>/dev/null)\" = {PORT_NAME} ] && echo /dev/${{d##*/}}; done"
        );
        let found_by = Instant::now() + SETUP_TIMEOUT;
        let device = loop {
            let out = vm.exec(&find)?;
            let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !device.is_empty() && vm.exec(&format!("test -c {device}"))?.ok() {
                break device;
            }
            if Instant::now() > found_by {
                bail!("the guest did not show the port {PORT_NAME} within {SETUP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let counter = Counter::start(stream.try_clone()?);
        Ok(BenchPort {
            device,
            stream,
            counter,
        })
    }

    /// The guest `dd`s `bytes` into the port; the host counts them.
    pub fn guest_to_host(&self, vm: &Vm, bytes: usize) -> Result<Duration> {
        let cmd = format!(
            "dd if=/dev/zero of={} bs={DD_BLOCK} count={} 2>/dev/null",
            self.device,
            bytes / DD_BLOCK
        );
        self.counter.time(bytes, || run(vm, &cmd))
    }

    /// The host writes `bytes` into the port; the guest `dd`s them to `/dev/null`.
    pub fn host_to_guest(&mut self, vm: &Vm, bytes: usize) -> Result<Duration> {
        let job = vm.client().background(&format!(
            "exec < {}; echo ready >&2; exec dd of=/dev/null bs={DD_BLOCK} count={} \
             iflag=fullblock 2>/dev/null",
            self.device,
            bytes / DD_BLOCK
        ))?;
        let stream = &mut self.stream;
        time_reader(vm, job, || flood(stream, bytes))
    }
}

/// The guest's `dd` of `bytes` from `/dev/zero` into a tmpfs file (removed after).
pub fn tmpfs_write(vm: &Vm, bytes: usize) -> Result<Duration> {
    let path = "/tmp/bench-dd.bin";
    let cmd = format!(
        "dd if=/dev/zero of={path} bs={DD_BLOCK} count={} 2>/dev/null",
        bytes / DD_BLOCK
    );
    let began = Instant::now();
    run(vm, &cmd)?;
    let took = began.elapsed();
    run(vm, &format!("rm {path}"))?;
    Ok(took)
}

/// The bare ttyS1 of a VM whose agent serves on virtio-serial.
pub struct RawUart {
    stream: UnixStream,
    counter: Counter,
}

impl RawUart {
    /// Connects to the VM's UART socket (free once the agent answered on
    /// virtio-serial) and sets ttyS1 raw, as the agent sets it for the fallback.
    pub fn attach(vm: &Vm) -> Result<RawUart> {
        let socket = vm.console_log().with_file_name("uart.sock");
        let stream = UnixStream::connect(&socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        run(vm, "stty -F /dev/ttyS1 115200 raw -echo")?;
        let counter = Counter::start(stream.try_clone()?);
        Ok(RawUart { stream, counter })
    }

    /// The guest `dd`s `bytes` into ttyS1; the host counts them.
    pub fn guest_to_host(&self, vm: &Vm, bytes: usize) -> Result<Duration> {
        let cmd = format!(
            "dd if=/dev/zero of=/dev/ttyS1 bs={UART_BLOCK} count={} 2>/dev/null",
            bytes / UART_BLOCK
        );
        self.counter.time(bytes, || run(vm, &cmd))
    }

    /// The host writes `bytes` into ttyS1 as fast as QEMU takes them; the guest
    /// `dd`s them to `/dev/null`.
    pub fn host_to_guest(&mut self, vm: &Vm, bytes: usize) -> Result<Duration> {
        let job = vm.client().background(&format!(
            "exec < /dev/ttyS1; stty 115200 raw -echo; echo ready >&2; \
             exec dd of=/dev/null bs={UART_BLOCK} count={} iflag=fullblock 2>/dev/null",
            bytes / UART_BLOCK
        ))?;
        let stream = &mut self.stream;
        time_reader(vm, job, || flood(stream, bytes))
    }
}
