//! QEMU process launch, console capture, boot deadline and teardown.
//!
//! QEMU runs in its own process group with `PR_SET_PDEATHSIG(SIGKILL)`, spawned from
//! one long-lived thread: the death signal follows the *thread* that forked, so a
//! test file's thread ending must not kill a VM another thread still uses.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::procs;
use crate::qmp::{Qmp, QmpError};
use crate::vm::link::Liveness;

/// How often [`Qemu::wait_exit`] looks for QEMU's exit.
const EXIT_POLL: Duration = Duration::from_millis(2);
/// The console line that marks a dead kernel.
const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// How long to retry connecting to a chardev socket QEMU is still creating.
const CONNECT_RETRY: Duration = Duration::from_millis(2);
/// Bound on reaping QEMU after SIGKILL (it cannot ignore the signal).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A VM's console capture, in its directory.
pub const CONSOLE_FILE: &str = "console.log";
/// What QEMU wrote on stderr, beside the console.
pub const STDERR_FILE: &str = "qemu.stderr";

/// Name of the virtio-serial port the agent looks for.
pub const AGENT_PORT_NAME: &str = "org.provium.agent.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    fn as_qemu(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// qcow2 images start with `QFI\xfb`; anything else is attached raw.
    pub fn detect(path: &Path) -> DiskFormat {
        let mut magic = [0u8; 4];
        let is_qcow2 = File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map(|()| &magic == b"QFI\xfb")
            .unwrap_or(false);
        if is_qcow2 {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

/// A virtio-blk drive; drives appear as `/dev/vda`, `/dev/vdb`, ... in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
    /// A serial number the guest sees (`/sys/block/vdX/serial`), to find the disk by.
    pub serial: Option<String>,
}

/// Everything needed to start one QEMU.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The VM's name in errors.
    pub vm: String,
    pub qemu: PathBuf,
    /// The VM's private directory (sockets, console log, QEMU stderr).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The complete kernel command line.
    pub append: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// `-accel kvm -cpu host` instead of `-accel tcg -cpu max`.
    pub use_kvm: bool,
    pub drives: Vec<Drive>,
    /// Start paused, waiting for a snapshot (`-incoming defer`, then QMP
    /// `migrate-incoming`); writable drives get a throwaway overlay (`snapshot=on`)
    /// so that VMs resumed from one snapshot never see each other's writes.
    pub resume: bool,
    /// QEMU's gdb stub listens on this local TCP port (`-gdb tcp:127.0.0.1:PORT`).
    pub gdb_port: Option<u16>,
    /// `-netdev`/`-device` arguments of NICs on host networks, in order.
    pub nics: Vec<String>,
    /// The machine (`pc`, `microvm`) and its firmware; its devices follow it.
    pub machine: super::machine::MachineSetup,
}

#[derive(Debug, Error)]
pub enum QemuError {
    #[error("cannot run {qemu}: {source}; install the qemu-system-x86 package")]
    NotInstalled { qemu: PathBuf, source: io::Error },
    #[error("VM {vm}: cannot start {qemu}: {source}")]
    Spawn {
        vm: String,
        qemu: PathBuf,
        source: io::Error,
    },
    #[error("VM {vm}: socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter PROVIUM_RUNS_DIR")]
    SocketPathTooLong { vm: String, path: PathBuf },
    #[error("VM {vm}: cannot prepare {path}: {source}")]
    Setup {
        vm: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("VM {vm}: disk {path} does not exist")]
    MissingDisk { vm: String, path: PathBuf },
    #[error("VM {vm}: {source}")]
    Qmp {
        vm: String,
        #[source]
        source: QmpError,
    },
}

/// What the console reader thread learned.
#[derive(Default)]
struct ConsoleState {
    /// QEMU closed its stdout: it has exited.
    closed: AtomicBool,
    /// When the guest last printed anything (set at launch, before any output).
    last_output: Mutex<Option<Instant>>,
    /// The first kernel panic line seen.
    panic: Mutex<Option<String>>,
    /// The agent's line saying its serving process died, once seen.
    agent_ended: Mutex<Option<String>>,
}

/// A running (or exited, not yet dropped) QEMU process.
pub struct Qemu {
    vm: String,
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    console_path: PathBuf,
    stderr_path: PathBuf,
    agent_socket: PathBuf,
    uart_socket: PathBuf,
    qmp_socket: PathBuf,
    console: Arc<ConsoleState>,
    console_thread: Option<JoinHandle<()>>,
    qmp: Option<Qmp>,
}

/// Requests to the spawner thread.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` fires only when Provium itself dies.
fn spawn_from_keeper(command: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("provium-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawn the QEMU spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// `; QEMU stderr: …` after an error message, when QEMU said anything.
pub fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; QEMU stderr: {stderr}")
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax.
fn opt_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

impl Qemu {
    /// Starts QEMU. The guest is not ready yet: connect to the agent with
    /// [`Qemu::connect_agent_sockets`] and handshake.
    pub fn launch(spec: &LaunchSpec) -> Result<Qemu, QemuError> {
        let setup = |path: &Path| {
            let vm = spec.vm.clone();
            let path = path.to_path_buf();
            move |source| QemuError::Setup { vm, path, source }
        };
        for drive in &spec.drives {
            if !drive.path.exists() {
                return Err(QemuError::MissingDisk {
                    vm: spec.vm.clone(),
                    path: drive.path.clone(),
                });
            }
        }
        let agent_socket = spec.dir.join("agent.sock");
        let uart_socket = spec.dir.join("uart.sock");
        let qmp_socket = spec.dir.join("qmp.sock");
        for socket in [&agent_socket, &uart_socket, &qmp_socket] {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(QemuError::SocketPathTooLong {
                    vm: spec.vm.clone(),
                    path: socket.clone(),
                });
            }
            match fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(setup(socket)(e)),
            }
        }
        let console_path = spec.dir.join(CONSOLE_FILE);
        let stderr_path = spec.dir.join(STDERR_FILE);
        let console_file = File::create(&console_path).map_err(setup(&console_path))?;
        let stderr_file = File::create(&stderr_path).map_err(setup(&stderr_path))?;

        let mut command = Command::new(&spec.qemu);
        command.args(qemu_args(spec, &agent_socket, &uart_socket, &qmp_socket));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .process_group(0);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid)
        // and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Provium died between fork and prctl: the signal would never come.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = spawn_from_keeper(command).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                QemuError::NotInstalled {
                    qemu: spec.qemu.clone(),
                    source,
                }
            } else {
                QemuError::Spawn {
                    vm: spec.vm.clone(),
                    qemu: spec.qemu.clone(),
                    source,
                }
            }
        })?;
        let pid = child.id() as i32;
        procs::register(pid);

        let console = Arc::new(ConsoleState::default());
        *console
            .last_output
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let stdout = child.stdout.take().expect("stdout is piped");
        let thread_state = Arc::clone(&console);
        let console_thread = std::thread::Builder::new()
            .name(format!("console-{}", spec.vm))
            .spawn(move || read_console(stdout, console_file, &thread_state));
        let console_thread = match console_thread {
            Ok(handle) => handle,
            Err(source) => {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                procs::unregister(pid);
                return Err(QemuError::Spawn {
                    vm: spec.vm.clone(),
                    qemu: spec.qemu.clone(),
                    source,
                });
            }
        };
        Ok(Qemu {
            vm: spec.vm.clone(),
            child,
            pid,
            status: None,
            console_path,
            stderr_path,
            agent_socket,
            uart_socket,
            qmp_socket,
            console,
            console_thread: Some(console_thread),
            qmp: None,
        })
    }

    /// The liveness check for waits on this VM: `Some(reason)` once QEMU has exited
    /// or the console shows a kernel panic.
    pub fn liveness(&self) -> Liveness {
        let console = Arc::clone(&self.console);
        Arc::new(move || dead_reason(&console))
    }

    /// Why the VM can no longer answer, if it cannot.
    pub fn dead_reason(&self) -> Option<String> {
        dead_reason(&self.console)
    }

    /// How long the console has been silent (since the launch when it never spoke).
    pub fn console_silence(&self) -> Duration {
        silence(&self.console)
    }

    /// A check of the console's silence for waits on other threads.
    pub fn silence_watch(&self) -> impl Fn() -> Duration + Send + Sync + 'static {
        let console = Arc::clone(&self.console);
        move || silence(&console)
    }

    /// The kernel panic line, once one appeared on the console.
    pub fn panic_line(&self) -> Option<String> {
        self.console
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects to the virtio-serial and UART chardev sockets, retrying while QEMU
    /// creates them. Returns `(virtio, uart)`.
    pub fn connect_agent_sockets(
        &self,
        deadline: Instant,
    ) -> Result<(UnixStream, UnixStream), ConnectError> {
        let virtio = self.connect_socket(&self.agent_socket, deadline)?;
        let uart = self.connect_socket(&self.uart_socket, deadline)?;
        Ok((virtio, uart))
    }

    fn connect_socket(&self, path: &Path, deadline: Instant) -> Result<UnixStream, ConnectError> {
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    if let Some(reason) = self.dead_reason() {
                        return Err(ConnectError::Dead(reason));
                    }
                    if let Err(stop) = crate::cancel::checkpoint() {
                        return Err(ConnectError::Dead(stop.to_string()));
                    }
                    if Instant::now() >= deadline {
                        return Err(ConnectError::Timeout {
                            path: path.to_path_buf(),
                            error,
                        });
                    }
                    std::thread::sleep(CONNECT_RETRY);
                }
            }
        }
    }

    /// The QMP session, connected on first use.
    pub fn qmp(&mut self, timeout: Duration) -> Result<&mut Qmp, QemuError> {
        if self.qmp.is_none() {
            let console = Arc::clone(&self.console);
            let qmp = Qmp::connect(&self.qmp_socket, timeout, &mut || {
                !console.closed.load(Ordering::Acquire)
            })
            .map_err(|source| QemuError::Qmp {
                vm: self.vm.clone(),
                source,
            })?;
            self.qmp = Some(qmp);
        }
        Ok(self.qmp.as_mut().expect("connected above"))
    }

    pub fn console_path(&self) -> &Path {
        &self.console_path
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.console_path, lines)
    }

    /// QEMU's stderr so far (bounded), trimmed.
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        if let Ok(file) = File::open(&self.stderr_path) {
            let _ = file.take(16 * 1024).read_to_string(&mut text);
        }
        text.trim().to_string()
    }

    /// QEMU's exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped(status);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for QEMU to exit by itself (polled every [`EXIT_POLL`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Every one-VM file ends here after its guest powers off: a short poll
            // keeps the wait's own cost (half a poll on average) off each file.
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGKILLs QEMU's process group and reaps it.
    pub fn kill(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the group is QEMU's own.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        // A stopped QEMU still dies from SIGKILL; the bound only guards a stuck kernel.
        self.wait_exit(REAP_TIMEOUT);
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        procs::unregister(self.pid);
        self.qmp = None;
        if let Some(thread) = self.console_thread.take() {
            // The pipe is at EOF once QEMU is gone, so the reader ends promptly.
            let _ = thread.join();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        for socket in [&self.agent_socket, &self.uart_socket, &self.qmp_socket] {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Failure to reach the agent's chardev sockets.
#[derive(Debug)]
pub enum ConnectError {
    Dead(String),
    Timeout { path: PathBuf, error: io::Error },
}

fn silence(console: &ConsoleState) -> Duration {
    console
        .last_output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(Duration::ZERO, |at| at.elapsed())
}

fn dead_reason(console: &ConsoleState) -> Option<String> {
    if let Some(line) = console
        .panic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return Some(format!("the kernel panicked: {line}"));
    }
    if console.closed.load(Ordering::Acquire) {
        return Some("QEMU exited".to_string());
    }
    if let Some(line) = console
        .agent_ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return Some(format!("the guest agent died ({line})"));
    }
    None
}

fn qemu_args(spec: &LaunchSpec, agent: &Path, uart: &Path, qmp: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
    ];
    let (accel, cpu) = if spec.use_kvm {
        ("kvm", "host")
    } else {
        ("tcg", "max")
    };
    args.extend(["-accel".into(), accel.into(), "-cpu".into(), cpu.into()]);
    args.extend(spec.machine.qemu_args());
    let machine = spec.machine.machine;
    args.extend([
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-smp".into(),
        spec.cpus.to_string(),
        "-kernel".into(),
        spec.kernel.to_string_lossy().into_owned(),
        "-initrd".into(),
        spec.initrd.to_string_lossy().into_owned(),
        "-append".into(),
        spec.append.clone(),
        // ttyS0: the console, on QEMU's stdout (read by the console thread).
        "-chardev".into(),
        "stdio,id=console,signal=off".into(),
        "-serial".into(),
        "chardev:console".into(),
        // ttyS1: the agent's fallback channel when the guest has no virtio console
        // (on a machine with a second UART; the socket exists either way).
        "-chardev".into(),
        format!(
            "socket,id=uart1,path={},server=on,wait=off",
            opt_escape(uart)
        ),
    ]);
    if machine.has_fallback_uart() {
        args.extend(["-serial".into(), "chardev:uart1".into()]);
    }
    args.extend([
        // Three ports: number 0 (QEMU keeps it for a virtconsole), the agent's, and
        // one spare (the transfer benchmark plugs its raw port there). The guest's
        // driver sets up two queues per possible port at probe time: QEMU's default
        // of 31 cost ~11 ms of every boot under TCG.
        "-device".into(),
        format!("{},id=vser0,max_ports=3", machine.virtio("serial")),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            opt_escape(agent)
        ),
        "-device".into(),
        format!("virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}"),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt_escape(qmp)),
    ]);
    if let Some(port) = spec.gdb_port {
        // Loopback only: the stub gives full control of the guest.
        args.extend(["-gdb".into(), format!("tcp:127.0.0.1:{port}")]);
    }
    for (index, drive) in spec.drives.iter().enumerate() {
        let options = format!(
            "file={},format={},readonly={}",
            opt_escape(&drive.path),
            drive.format.as_qemu(),
            if drive.readonly { "on" } else { "off" }
        ) + if spec.resume && !drive.readonly {
            ",snapshot=on"
        } else {
            ""
        };
        // Every disk is an explicit device, so the guest's /dev/vdX follow this
        // order (QEMU creates `if=virtio` drives after explicit devices); a serial
        // is a property of the device, not of `-drive`.
        let serial = drive
            .serial
            .as_ref()
            .map(|s| format!(",serial={s}"))
            .unwrap_or_default();
        args.extend([
            "-drive".into(),
            format!("{options},if=none,id=disk{index}"),
            "-device".into(),
            format!("{},drive=disk{index}{serial}", machine.virtio("blk")),
        ]);
    }
    args.extend(spec.nics.iter().cloned());
    if spec.resume {
        args.extend(["-incoming".into(), "defer".into()]);
    }
    args
}

/// Copies QEMU's stdout (the serial console) to `log`, dropping the UART's `\r`,
/// and records panics and EOF.
fn read_console(mut stdout: impl Read, log: File, state: &ConsoleState) {
    let mut log = io::BufWriter::new(log);
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        *state.last_output.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let chunk: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
        let _ = log.write_all(&chunk);
        let _ = log.flush();
        for &byte in &chunk {
            if byte == b'\n' {
                note_line(&line, state);
                line.clear();
            } else if line.len() < 4096 {
                line.push(byte);
            }
        }
        // A panic message may be the last thing printed, without a newline yet.
        note_line(&line, state);
    }
    let _ = log.flush();
    state.closed.store(true, Ordering::Release);
}

fn note_line(line: &[u8], state: &ConsoleState) {
    let text = String::from_utf8_lossy(line);
    for (marker, slot) in [
        (PANIC_MARKER, &state.panic),
        (provium_proto::AGENT_ENDED, &state.agent_ended),
    ] {
        if let Some(at) = text.find(marker) {
            let seen = text[at..].trim().to_string();
            let mut first = slot.lock().unwrap_or_else(|e| e.into_inner());
            // A line seen half-printed is completed by the next read; later lines
            // (a panic in the panic handler itself) do not replace the first.
            match first.as_ref() {
                None => *first = Some(seen),
                Some(partial) if seen.starts_with(partial.as_str()) => *first = Some(seen),
                Some(_) => {}
            }
        }
    }
}

/// The last `lines` lines of a console log (reads at most its last 64 KiB).
pub fn console_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.trim_end_matches('\n').lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader returning at most 7 bytes per call, like a pipe under load.
    struct SmallReads<R>(R);

    impl<R: Read> Read for SmallReads<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let len = buf.len().min(7);
            self.0.read(&mut buf[..len])
        }
    }

    #[test]
    fn console_reader_strips_cr_and_spots_panics() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("console.log");
        let log = File::create(&log_path).unwrap();
        let state = ConsoleState::default();
        // Delivered in pieces, the panic line splits mid-message.
        let input = io::Read::chain(
            &b"[ 1.0] booting\r\n[ 2.0] Kernel panic - not syncing:"[..],
            &b" sysrq triggered crash\r\n"[..],
        );
        read_console(SmallReads(input), log, &state);
        assert!(state.closed.load(Ordering::Acquire));
        assert_eq!(
            fs::read_to_string(&log_path).unwrap(),
            "[ 1.0] booting\n[ 2.0] Kernel panic - not syncing: sysrq triggered crash\n"
        );
        let reason = dead_reason(&state).unwrap();
        assert_eq!(
            reason,
            "the kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
        );
        assert_eq!(
            console_tail(&log_path, 1),
            "[ 2.0] Kernel panic - not syncing: sysrq triggered crash"
        );
    }

    #[test]
    fn the_agent_dying_makes_the_vm_dead_while_qemu_runs() {
        let state = ConsoleState::default();
        note_line(b"provium-agent: serving on virtio-serial", &state);
        assert_eq!(dead_reason(&state), None);
        note_line(b"provium-agent: the serving agent ended: exi", &state);
        note_line(
            b"provium-agent: the serving agent ended: exited with status 0",
            &state,
        );
        assert_eq!(
            dead_reason(&state).unwrap(),
            "the guest agent died (the serving agent ended: exited with status 0)"
        );
    }

    #[test]
    fn args_escape_commas_and_order_serial_ports() {
        let spec = LaunchSpec {
            vm: "vm1".into(),
            qemu: "qemu-system-x86_64".into(),
            dir: "/tmp/r".into(),
            kernel: "/boot/vmlinuz".into(),
            initrd: "/tmp/r/initrd".into(),
            append: "console=ttyS0".into(),
            memory_mib: 512,
            cpus: 2,
            use_kvm: false,
            drives: vec![Drive {
                serial: None,
                path: "/img/a,b.qcow2".into(),
                format: DiskFormat::Qcow2,
                readonly: true,
            }],
            resume: false,
            gdb_port: None,
            nics: Vec::new(),
            machine: crate::vm::machine::MachineSetup {
                machine: crate::vm::machine::Machine::Pc,
                firmware: None,
                reason: String::new(),
            },
        };
        let args = qemu_args(
            &spec,
            Path::new("/tmp/r/agent.sock"),
            Path::new("/tmp/r/uart.sock"),
            Path::new("/tmp/r/qmp.sock"),
        );
        let joined = args.join(" ");
        assert!(
            joined.contains("-accel tcg -cpu max -machine pc -m 512M -smp 2"),
            "{joined}"
        );
        assert!(joined.contains(
            "-drive file=/img/a,,b.qcow2,format=qcow2,readonly=on,if=none,id=disk0 \
             -device virtio-blk-pci,drive=disk0"
        ));
        let console = joined.find("-serial chardev:console").unwrap();
        let uart = joined.find("-serial chardev:uart1").unwrap();
        assert!(console < uart, "ttyS0 must be the console: {joined}");
        assert!(joined.contains("name=org.provium.agent.0"));
    }

    #[test]
    fn resume_args_wait_for_a_snapshot_and_overlay_writable_drives() {
        let drive = |path: &str, readonly| Drive {
            serial: None,
            path: path.into(),
            format: DiskFormat::Raw,
            readonly,
        };
        let spec = LaunchSpec {
            vm: "vm2".into(),
            qemu: "qemu-system-x86_64".into(),
            dir: "/tmp/r".into(),
            kernel: "/boot/vmlinuz".into(),
            initrd: "/tmp/r/initrd".into(),
            append: "console=ttyS0".into(),
            memory_mib: 256,
            cpus: 1,
            use_kvm: false,
            drives: vec![drive("/img/root", true), drive("/img/data", false)],
            resume: true,
            gdb_port: None,
            nics: Vec::new(),
            machine: crate::vm::machine::MachineSetup {
                machine: crate::vm::machine::Machine::Pc,
                firmware: None,
                reason: String::new(),
            },
        };
        let sock = Path::new("/tmp/r/s");
        let args = qemu_args(&spec, sock, sock, sock);
        let joined = args.join(" ");
        assert!(joined.ends_with("-incoming defer"), "{joined}");
        assert!(joined.contains("file=/img/root,format=raw,readonly=on,if=none,id=disk0 "));
        assert!(
            joined.contains("file=/img/data,format=raw,readonly=off,snapshot=on,if=none,id=disk1")
        );
        let cold = qemu_args(
            &LaunchSpec {
                resume: false,
                ..spec
            },
            sock,
            sock,
            sock,
        );
        assert_eq!(
            cold.join(" "),
            joined
                .trim_end_matches(" -incoming defer")
                .replace(",snapshot=on", "")
        );
    }
}
