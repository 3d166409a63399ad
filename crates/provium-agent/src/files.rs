//! Binary-safe file transfer in chunks (`Data` frames, see docs/protocol.md), the
//! kernel log and the standard virtual file systems.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use provium_proto::{AgentError, Response, DATA_FRAME_PREFIX, MAX_DATA};

use crate::sys;

/// Opens `path` read-only, or names the path and errno.
fn open_read(path: &str) -> Result<OwnedFd, AgentError> {
    let c_path = sys::cstring(path, "read_file", "path")?;
    // SAFETY: `c_path` is a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(sys::path_error("open", path));
    }
    // SAFETY: open succeeded; the descriptor has no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `path`'s contents as `Data` frames of up to `chunk` bytes and answers with
/// their total. Each frame is read straight into `frame` (the caller's buffer, kept
/// between requests: fresh memory costs a page fault per 4 KiB under TCG) after the
/// room its prefix needs; `send` seals and sends it, false when no one takes it.
/// A file past the cap is `FileTooLarge`: at once when `fstat` shows it, otherwise
/// once the bytes read pass it (the host drops what it got).
pub fn read_file(
    path: &str,
    chunk: usize,
    frame: &mut Vec<u8>,
    send: &mut dyn FnMut(&mut [u8]) -> bool,
) -> Result<Response, AgentError> {
    let fd = open_read(path)?;
    let too_large = || AgentError::FileTooLarge {
        path: path.to_string(),
        cap: u64::from(MAX_DATA),
    };
    // SAFETY: `stat` is plain data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place for the kernel's `struct stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0
        && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
        && st.st_size > i64::from(MAX_DATA)
    {
        return Err(too_large());
    }
    let end = DATA_FRAME_PREFIX + chunk;
    if frame.len() < end {
        frame.resize(end, 0);
    }
    // Files in /proc and /sys report size 0, so read until end-of-file.
    let mut total: u64 = 0;
    loop {
        let mut filled = DATA_FRAME_PREFIX;
        while filled < end {
            let n = sys::read_fd(fd.as_raw_fd(), &mut frame[filled..end]).map_err(|errno| {
                AgentError::Path {
                    op: "read".to_string(),
                    path: path.to_string(),
                    errno,
                }
            })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let n = filled - DATA_FRAME_PREFIX;
        if n == 0 {
            return Ok(Response::File { size: total });
        }
        total += n as u64;
        if total > u64::from(MAX_DATA) {
            return Err(too_large());
        }
        if !send(&mut frame[..filled]) {
            return Err(AgentError::Os {
                op: "send read_file data".to_string(),
                errno: libc::EPIPE,
            });
        }
    }
}

/// A `write_file` in progress: the file is open and `left` more bytes are due in
/// `Data` frames carrying the request's sequence number, written as they arrive.
pub struct Upload {
    /// The request's sequence number.
    pub seq: u32,
    path: String,
    fd: OwnedFd,
    left: u64,
    mode: Option<u32>,
}

impl Upload {
    /// Creates or truncates `path` for `size` bytes; more than the cap is refused
    /// before anything is opened.
    pub fn start(
        seq: u32,
        path: String,
        size: u64,
        mode: Option<u32>,
    ) -> Result<Upload, AgentError> {
        if size > u64::from(MAX_DATA) {
            return Err(AgentError::FileTooLarge {
                path,
                cap: u64::from(MAX_DATA),
            });
        }
        let c_path = sys::cstring(&path, "write_file", "path")?;
        // SAFETY: `c_path` is a NUL-terminated path alive for the call.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                mode.unwrap_or(0o644),
            )
        };
        if fd < 0 {
            return Err(sys::path_error("open", &path));
        }
        Ok(Upload {
            seq,
            path,
            // SAFETY: open succeeded; the descriptor has no other owner.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            left: size,
            mode,
        })
    }

    /// Whether every announced byte has been written.
    pub fn complete(&self) -> bool {
        self.left == 0
    }

    /// Writes the next piece of the file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        if data.len() as u64 > self.left {
            return Err(AgentError::InvalidRequest {
                op: "write_file".to_string(),
                reason: format!(
                    "{} bytes of data arrived for the {} bytes still due",
                    data.len(),
                    self.left
                ),
            });
        }
        sys::write_all_fd(self.fd.as_raw_fd(), data).map_err(|errno| AgentError::Path {
            op: "write".to_string(),
            path: self.path.clone(),
            errno,
        })?;
        self.left -= data.len() as u64;
        Ok(())
    }

    /// Applies an explicit mode and closes the file: the answer once it is complete.
    pub fn finish(self) -> Result<Response, AgentError> {
        // An explicit mode must not be narrowed by the umask, nor left as it was when
        // the file already existed.
        if let Some(mode) = self.mode {
            // SAFETY: fchmod on the descriptor opened above takes no pointers.
            if unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) } != 0 {
                return Err(sys::path_error("chmod", &self.path));
            }
        }
        let fd = self.fd.into_raw_fd();
        // SAFETY: `fd` came from `into_raw_fd` above; this is its only owner.
        if unsafe { libc::close(fd) } != 0 {
            return Err(sys::path_error("close", &self.path));
        }
        Ok(Response::Done)
    }
}

pub fn dmesg() -> Result<Response, AgentError> {
    const SYSLOG_ACTION_READ_ALL: i32 = 3;
    const SYSLOG_ACTION_SIZE_BUFFER: i32 = 10;
    // SAFETY: SIZE_BUFFER reads no buffer; a null pointer of length 0 is allowed.
    let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(sys::os_error("klogctl(SIZE_BUFFER)"));
    }
    let mut log = vec![0u8; size as usize];
    // SAFETY: the kernel writes at most `size` bytes, the length of `log`.
    let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, log.as_mut_ptr().cast(), size) };
    if n < 0 {
        return Err(sys::os_error("klogctl(READ_ALL)"));
    }
    log.truncate(n as usize);
    Ok(Response::Dmesg { log })
}

/// The file systems `mount_vfs` provides: (source, target, type).
const VFS: [(&str, &str, &str); 4] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("securityfs", "/sys/kernel/security", "securityfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
];

/// (mount point, type) pairs currently mounted, empty while /proc is not.
fn mounted() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            Some((target.to_string(), fstype.to_string()))
        })
        .collect()
}

/// Mounts what is missing. Checking the mount table first matters: mounting proc or
/// sysfs twice does not fail, it stacks a second mount.
pub fn mount_vfs() -> Result<Response, AgentError> {
    for (source, target, fstype) in VFS {
        let already = mounted().iter().any(|(t, ty)| t == target && ty == fstype);
        if already {
            continue;
        }
        mount_one(source, target, fstype, 0, None)?;
    }
    Ok(Response::Done)
}

/// Creates `target` if needed and mounts `fstype` on it; EBUSY (already mounted) is
/// success.
pub fn mount_one(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), AgentError> {
    let c_source = sys::cstring(source, "mount", "source")?;
    let c_target = sys::cstring(target, "mount", "target")?;
    let c_type = sys::cstring(fstype, "mount", "type")?;
    // SAFETY: every pointer is a NUL-terminated string alive for the calls, or null
    // for no mount data.
    unsafe {
        if libc::mkdir(c_target.as_ptr(), 0o755) != 0 && sys::errno() != libc::EEXIST {
            return Err(sys::path_error("mkdir", target));
        }
        let data_ptr = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
        if libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            flags,
            data_ptr,
        ) != 0
            && sys::errno() != libc::EBUSY
        {
            return Err(sys::path_error(&format!("mount {fstype} on"), target));
        }
    }
    Ok(())
}
