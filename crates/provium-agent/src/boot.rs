//! PID-1 startup: console, module loading, and the split into the serving agent and
//! the profile's init (or, without one, a reaper that stays PID 1).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::time::Duration;

use provium_proto::AGENT_ENDED;

use crate::channel::Mode;
use crate::files;
use crate::log::{self, log};
use crate::net;
use crate::port;
use crate::router::Router;
use crate::sys;

/// PATH for commands when the agent is the whole userspace.
pub const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// Runs as the kernel's `rdinit`. `args` is argv; `argv[0]` locates the shim
/// directory (`/proc/self/exe` needs /proc, which is not mounted yet).
pub fn run_as_init(args: Vec<String>) -> ! {
    let shim_dir = args
        .first()
        .and_then(|a| a.rsplit_once('/'))
        .map(|(dir, _)| if dir.is_empty() { "/" } else { dir })
        .unwrap_or("/.provium")
        .to_string();
    setup_console(&shim_dir);
    load_modules(&format!("{shim_dir}/modules.order"));
    // A VM on the host's networks: its NIC drivers, then its addresses, before the
    // test gets it.
    if std::path::Path::new(&format!("{shim_dir}/net")).exists() {
        load_modules(&format!("{shim_dir}/modules-net.order"));
        net::configure(&shim_dir);
    }
    let init = choose_init(&shim_dir);
    if init.is_none() {
        mount_basics();
        mount_modules_disk();
        // Before any thread exists, so changing the environment is sound.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    // SAFETY: PID 1 is still single-threaded, so the child may go on running any
    // code; it never returns here (serve_guest ends in `_exit`).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        serve_guest(&shim_dir);
    }
    if pid < 0 {
        log!(
            "fork failed: {}; not serving",
            std::io::Error::last_os_error()
        );
    }
    if let Some(init) = init {
        exec_init(&init, &args[1..]);
        mount_basics();
    }
    reap_forever()
}

/// Splits off the process that serves; the caller stays behind to report on the
/// console when it dies (a test's `exit_group`, a crash), because the host's end of
/// the channel stays open and the console is how it learns nothing will answer.
/// Returns in the serving process only. Without a fork, serving goes on unwatched.
fn supervise() {
    // SAFETY: called while the serving process is still single-threaded.
    let server = unsafe { libc::fork() };
    if server <= 0 {
        if server < 0 {
            log!(
                "fork failed: {}; serving without a supervisor",
                std::io::Error::last_os_error()
            );
        }
        return;
    }
    let ended = match sys::wait_pid(server) {
        Ok(status) => sys::describe_status(status),
        Err(errno) => format!("waitpid failed with errno {errno}"),
    };
    log!("{AGENT_ENDED}{ended}");
    // SAFETY: _exit has no preconditions; nothing in this supervisor needs flushing.
    unsafe { libc::_exit(0) }
}

/// Opens the console for logging and gives PID 1 (and so init) descriptors 0-2 if
/// the kernel could not (an initramfs without /dev/console).
fn setup_console(shim_dir: &str) {
    let c_console = CString::new("/dev/console").unwrap_or_default();
    // SAFETY: `c_console` is a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(c_console.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    let fd = if fd >= 0 {
        fd
    } else {
        match sys::open_char_device(shim_dir, "console", 5, 1) {
            Ok(f) => f.into_raw_fd(),
            Err(_) => return,
        }
    };
    for target in 0..3 {
        // SAFETY: F_GETFD only asks whether `target` is open.
        if target != fd && unsafe { libc::fcntl(target, libc::F_GETFD) } < 0 {
            // SAFETY: `target` is closed, so dup2 takes it from no owner.
            unsafe { libc::dup2(fd, target) };
        }
    }
    // A private copy above 2 that init and commands do not inherit.
    // SAFETY: duplicating a descriptor this function opened takes no pointers.
    let log_fd = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if fd >= 3 {
        // SAFETY: `fd` was opened above and is owned by nothing else.
        unsafe { libc::close(fd) };
    } else {
        // SAFETY: clearing close-on-exec so init inherits its standard descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    if log_fd >= 0 {
        log::set_fd(log_fd);
    }
}

/// Loads the modules listed in `list` (a `modules.order` of the shim), dependencies
/// first; a module that is already loaded (or built in) is fine, any other failure
/// is logged and skipped.
fn load_modules(list: &str) {
    let Ok(order) = std::fs::read_to_string(list) else {
        return;
    };
    let params = CString::default();
    for path in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log!("module {path}: {e}");
                continue;
            }
        };
        let fd = file.into_raw_fd();
        // SAFETY: `fd` is open, `params` is a NUL-terminated (empty) string alive
        // for the call.
        let ret = unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0) };
        let errno = sys::errno();
        // SAFETY: `fd` came from `into_raw_fd` above; this is its only owner.
        unsafe { libc::close(fd) };
        if ret != 0 && errno != libc::EEXIST {
            log!(
                "loading module {path} failed: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }
}

/// The init to chain to, from the shim's `init` file; `None` for `none` or a
/// missing init (with a warning naming it).
fn choose_init(shim_dir: &str) -> Option<String> {
    let choice = std::fs::read_to_string(format!("{shim_dir}/init")).unwrap_or_default();
    let choice = choice.trim();
    if choice.is_empty() || choice == "none" {
        return None;
    }
    if std::fs::symlink_metadata(choice).is_err() {
        log!("warning: init {choice} does not exist in the initramfs; the agent stays PID 1 and serves");
        return None;
    }
    Some(choice.to_string())
}

/// Without an init, the agent provides the basic file systems itself.
fn mount_basics() {
    let mounts = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ];
    for (source, target, fstype) in mounts {
        if let Err(e) = files::mount_one(source, target, fstype, 0, None) {
            log!("{e}");
        }
    }
}

/// The serial of the read-only disk the host attaches with the kernel's modules.
const MODULES_DISK_SERIAL: &str = "provium-modules";
/// On the kernel command line when the host attached that disk.
const MODULES_DISK_FLAG: &str = "provium.modules=disk";

/// Mounts the host's modules disk (when it attached one) read-only on
/// `/lib/modules/<release>`, so `modprobe` works in a guest whose initramfs has no
/// modules of its own. Only when the agent stays PID 1: a profile's own init and root
/// file system bring their own modules.
fn mount_modules_disk() {
    // The host says so on the command line: a guest without it looks for nothing.
    let attached = std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == MODULES_DISK_FLAG));
    if !attached {
        return;
    }
    let Some(device) = find_disk_by_serial(MODULES_DISK_SERIAL) else {
        return log!("the modules disk ({MODULES_DISK_SERIAL}) did not appear");
    };
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release.trim().to_string(),
        Err(e) => return log!("cannot read the kernel release: {e}"),
    };
    let target = format!("/lib/modules/{release}");
    if let Err(e) = std::fs::create_dir_all(&target) {
        return log!("cannot create {target}: {e}");
    }
    if let Err(e) = files::mount_one(&device, &target, "ext4", libc::MS_RDONLY, None) {
        log!("{e}");
    }
}

/// `/dev/vdX` of the virtio disk whose serial is `serial`; its driver may still be
/// probing, so this looks for up to two seconds.
fn find_disk_by_serial(serial: &str) -> Option<String> {
    for _ in 0..100 {
        let found = std::fs::read_dir("/sys/block")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let serial_file = entry.path().join("serial");
                let found = std::fs::read_to_string(serial_file).ok()?;
                (name.starts_with("vd") && found.trim() == serial).then(|| format!("/dev/{name}"))
            });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn exec_init(init: &str, extra: &[String]) {
    let Ok(path) = CString::new(init) else { return };
    let mut argv_owned = vec![path.clone()];
    argv_owned.extend(extra.iter().filter_map(|a| CString::new(a.as_str()).ok()));
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `argv` is a NULL-terminated array of pointers into `argv_owned`, and it
    // and `path` outlive the call.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    log!(
        "cannot execute init {init}: {}; the agent stays PID 1",
        std::io::Error::last_os_error()
    );
}

/// PID 1 without an init: reap orphans forever (PID 1 must never exit).
fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid place for the wait status.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 && sys::errno() == libc::ECHILD {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The serving child: finds the link, then serves it for the life of the VM.
fn serve_guest(shim_dir: &str) -> ! {
    // SAFETY: setsid takes no arguments and has no memory-safety preconditions.
    unsafe { libc::setsid() };
    supervise();
    if std::env::var_os("PATH").is_none() {
        // Still single-threaded here.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    let (link, kind, description) = match port::open_link(shim_dir) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot open the host channel: {e}");
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) };
        }
    };
    log!("serving on {description}");
    match Router::new(Mode::Guest) {
        Ok(mut router) => router.serve_link(link, kind),
        Err(e) => log!("{e}"),
    }
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}
