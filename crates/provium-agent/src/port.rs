//! Finding and opening the link device: the virtio-serial port named
//! `org.provium.agent.0`, or the second 8250 UART (ttyS1) when the guest has no
//! virtio console. Nothing is left mounted or created in init's view of the system:
//! sysfs is mounted only inside a short-lived helper's private mount namespace, and
//! device nodes are unlinked as soon as they are open.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use crate::router::LinkKind;
use crate::sys;

/// The virtserialport name the host gives the agent's channel.
pub const PORT_NAME: &str = "org.provium.agent.0";

/// How long the port may take to appear (module probing, the port-name message).
const PORT_WAIT: Duration = Duration::from_secs(5);
const PORT_POLL: Duration = Duration::from_millis(20);
/// How long to wait for a virtio console device before falling back to ttyS1.
const NO_DEVICE_WAIT: Duration = Duration::from_secs(1);

/// Opens the link; `dir` is a writable private directory (the shim's) for the
/// temporary mount point and device nodes. Returns the device, its kind and a
/// description for the console.
pub fn open_link(dir: &str) -> Result<(File, LinkKind, String), String> {
    match find_virtio_port(dir) {
        Ok((major, minor)) => {
            let file = sys::open_char_device(dir, "port", major, minor)?;
            Ok((
                file,
                LinkKind::Virtio,
                format!("virtio-serial port {PORT_NAME} ({major}:{minor})"),
            ))
        }
        Err(why) => {
            let file = sys::open_char_device(dir, "ttyS1", 4, 65)
                .map_err(|e| format!("no virtio port ({why}) and no ttyS1 fallback: {e}"))?;
            set_raw(&file).map_err(|e| format!("ttyS1: cannot set raw mode: {e}"))?;
            Ok((
                file,
                LinkKind::Uart,
                format!("ttyS1 at 115200 baud, raw (no virtio port: {why})"),
            ))
        }
    }
}

/// The kernel's `struct termios` (what TCGETS/TCSETS take). glibc's termios calls
/// are avoided: its versioned `cfset*speed` symbols do not link statically.
#[repr(C)]
struct KernelTermios {
    c_iflag: libc::tcflag_t,
    c_oflag: libc::tcflag_t,
    c_cflag: libc::tcflag_t,
    c_lflag: libc::tcflag_t,
    c_line: libc::cc_t,
    c_cc: [libc::cc_t; 19],
}

fn set_raw(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let mut t = KernelTermios {
        c_iflag: 0,
        c_oflag: 0,
        c_cflag: 0,
        c_lflag: 0,
        c_line: 0,
        c_cc: [0; 19],
    };
    // SAFETY: `t` has the layout of the kernel's termios, which TCGETS fills.
    if unsafe { libc::ioctl(fd, libc::TCGETS, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // cfmakeraw, then 115200 baud 8N1 with the receiver on and modem lines ignored.
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_oflag &= !libc::OPOST;
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CBAUD);
    t.c_cflag |= libc::CS8 | libc::B115200 | libc::CLOCAL | libc::CREAD;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // TCSETSF also discards input that arrived while the line was still cooked
    // (echoed and mangled); the host repeats its Hello.
    // SAFETY: `t` is a kernel termios, which TCSETSF only reads.
    if unsafe { libc::ioctl(fd, libc::TCSETSF, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Finds the port's device numbers, or says what was seen instead. When sysfs is
/// already mounted on `/sys` (the agent is the whole userspace and mounted it), the
/// scan reads it in place; otherwise it runs in a forked helper with its own mount
/// namespace, so init's view of the system stays untouched.
fn find_virtio_port(dir: &str) -> Result<(u32, u32), String> {
    if std::path::Path::new("/sys/kernel").is_dir() {
        return parse_scan(&scan_sysfs("/sys"));
    }
    let mount_point = format!("{dir}/.sysfs-{}", std::process::id());
    let c_mount = CString::new(mount_point.clone()).map_err(|_| "bad mount point".to_string())?;
    // SAFETY: `c_mount` is a NUL-terminated path alive for the call.
    if unsafe { libc::mkdir(c_mount.as_ptr(), 0o700) } != 0 {
        return Err(format!(
            "mkdir {mount_point}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (read_end, write_end) = sys::pipe().map_err(|e| e.to_string())?;
    // SAFETY: the serving agent is single-threaded here (the router starts its
    // threads later), so the helper may run any code; it leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(read_end);
        let answer = scan_in_private_namespace(&c_mount, &mount_point);
        let _ = sys::write_all_fd(write_end.as_raw_fd(), answer.as_bytes());
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) };
    }
    drop(write_end);
    let mut answer = String::new();
    // SAFETY: `into_raw_fd` gives up the only owner of the descriptor.
    let read = unsafe { File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(read_end)) }
        .read_to_string(&mut answer);
    if pid > 0 {
        let _ = sys::wait_pid(pid);
    }
    // SAFETY: `c_mount` is a NUL-terminated path alive for the call.
    unsafe { libc::rmdir(c_mount.as_ptr()) };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    read.map_err(|e| format!("reading the scan helper: {e}"))?;
    parse_scan(&answer)
}

/// The scan's answer: `dev MAJOR:MINOR`, or why there is none.
fn parse_scan(answer: &str) -> Result<(u32, u32), String> {
    let answer = answer.trim();
    let numbers = answer
        .strip_prefix("dev ")
        .ok_or_else(|| answer.to_string())?;
    let (major, minor) = numbers
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("bad device number {numbers:?}"))?;
    Ok((major, minor))
}

fn scan_in_private_namespace(c_mount: &CString, mount_point: &str) -> String {
    let c_sysfs = CString::new("sysfs").unwrap_or_default();
    let c_root = CString::new("/").unwrap_or_default();
    // SAFETY: every pointer is a NUL-terminated string alive for the calls, or null
    // where mount(2) accepts none.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return format!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        // Keep the mount from propagating back into init's namespace.
        libc::mount(
            std::ptr::null(),
            c_root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        if libc::mount(
            c_sysfs.as_ptr(),
            c_mount.as_ptr(),
            c_sysfs.as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return format!("mount sysfs: {}", std::io::Error::last_os_error());
        }
    }
    scan_sysfs(mount_point)
}

/// Waits for the port under the sysfs mounted at `sysfs`: `dev MAJOR:MINOR`, or what
/// was seen instead.
fn scan_sysfs(sysfs: &str) -> String {
    let class = format!("{sysfs}/class/virtio-ports");
    let devices = format!("{sysfs}/bus/virtio/devices");
    let start = Instant::now();
    let deadline = start + PORT_WAIT;
    loop {
        // Without a virtio console device (virtio id 3) no port will ever appear;
        // give probing a moment, then stop waiting.
        if start.elapsed() >= NO_DEVICE_WAIT && !has_console_device(&devices) {
            return format!("no virtio console device within {NO_DEVICE_WAIT:?}");
        }
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&class) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = std::fs::read_to_string(path.join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    if let Ok(dev) = std::fs::read_to_string(path.join("dev")) {
                        return format!("dev {}", dev.trim());
                    }
                }
                seen.push(format!("{:?}", name.trim()));
            }
        }
        if Instant::now() >= deadline {
            return if std::path::Path::new(&class).exists() {
                format!(
                    "no port named {PORT_NAME} within {PORT_WAIT:?}; ports seen: [{}]",
                    seen.join(", ")
                )
            } else {
                format!("no virtio console ports within {PORT_WAIT:?}")
            };
        }
        std::thread::sleep(PORT_POLL);
    }
}

fn has_console_device(devices: &str) -> bool {
    const VIRTIO_ID_CONSOLE: &str = "0x0003";
    std::fs::read_dir(devices).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            std::fs::read_to_string(e.path().join("device"))
                .is_ok_and(|id| id.trim() == VIRTIO_ID_CONSOLE)
        })
    })
}
