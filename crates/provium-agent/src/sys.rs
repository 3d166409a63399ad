//! Thin wrappers over libc: errno, C strings, owned fds, fork-safe child setup.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use provium_proto::AgentError;

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A C string for a request field; an interior NUL is the request's fault.
pub fn cstring(value: &str, op: &str, what: &str) -> Result<CString, AgentError> {
    CString::new(value).map_err(|_| AgentError::InvalidRequest {
        op: op.to_string(),
        reason: format!("{what} contains a NUL byte"),
    })
}

pub fn os_error(op: &str) -> AgentError {
    AgentError::Os {
        op: op.to_string(),
        errno: errno(),
    }
}

pub fn path_error(op: &str, path: &str) -> AgentError {
    AgentError::Path {
        op: op.to_string(),
        path: path.to_string(),
        errno: errno(),
    }
}

/// A pipe whose ends close on exec: `(read, write)`.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads into `buf`, retrying on EINTR; `Ok(0)` is end of file.
pub fn read_fd(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Writes all of `data`, retrying on EINTR and short writes.
pub fn write_all_fd(fd: i32, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: the kernel reads at most `data.len()` bytes from `data`.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Maps a wait status to an exit code, signals as 128+n like a shell.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Human-readable account of a wait status, for logs and `WorkerGone`.
pub fn describe_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}

/// In a forked child before exec: `signals` back to their default action (Rust
/// ignores SIGPIPE; commands expect it, as in `yes | head`) and nothing blocked.
///
/// # Safety
/// Only between `fork` and exec/`_exit`: it makes async-signal-safe calls alone.
pub unsafe fn child_signal_defaults(signals: &[i32]) {
    for &signal in signals {
        libc::signal(signal, libc::SIG_DFL);
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
}

/// `waitpid` retrying on EINTR.
pub fn wait_pid(pid: i32) -> Result<i32, i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid place for the kernel to store the wait status.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Makes a character device node at a private path, opens it and unlinks it, so
/// nothing is left in the guest's file system.
pub fn open_char_device(dir: &str, label: &str, major: u32, minor: u32) -> Result<File, String> {
    let path = format!("{dir}/.provium-{label}-{}", std::process::id());
    let c_path = CString::new(path.clone()).map_err(|_| format!("bad path {path}"))?;
    // SAFETY: `c_path` is a NUL-terminated string alive for every call; the
    // descriptor open returns is new and handed to exactly one `File`.
    unsafe {
        libc::unlink(c_path.as_ptr());
        if libc::mknod(
            c_path.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        ) != 0
        {
            return Err(format!(
                "mknod {path} ({major}:{minor}): {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        let open_err = std::io::Error::last_os_error();
        libc::unlink(c_path.as_ptr());
        if fd < 0 {
            return Err(format!("open {path} ({major}:{minor}): {open_err}"));
        }
        Ok(File::from_raw_fd(fd))
    }
}

/// Closes every descriptor from 3 up except those in `keep` (a forked worker must not
/// hold the link or other workers' sockets open). Only for a freshly forked child
/// that never again uses the objects owning the closed descriptors and leaves with
/// `_exit`, so their destructors never run.
pub fn close_fds_except(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().filter(|&fd| fd >= 3) {
        if fd > from {
            // SAFETY: close_range takes no pointers. The owners of the descriptors it
            // closes are never used again in this process (see above).
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}
