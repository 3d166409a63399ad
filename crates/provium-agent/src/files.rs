//! Binary-safe file transfer, the kernel log and the standard virtual file systems.

use std::ffi::CStr;

use provium_proto::{AgentError, Response, MAX_DATA};

use crate::sys;

pub fn read_file(path: &str) -> Result<Response, AgentError> {
    let c_path = sys::cstring(path, "read_file", "path")?;
    // SAFETY: `c_path` is a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(sys::path_error("open", path));
    }
    let result = read_capped(fd, path);
    // SAFETY: `fd` was opened above and has no other owner.
    unsafe { libc::close(fd) };
    result.map(|data| Response::File { data })
}

fn read_capped(fd: i32, path: &str) -> Result<Vec<u8>, AgentError> {
    let too_large = || AgentError::FileTooLarge {
        path: path.to_string(),
        cap: u64::from(MAX_DATA),
    };
    // SAFETY: `stat` is plain data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place for the kernel's `struct stat`.
    if unsafe { libc::fstat(fd, &mut st) } == 0
        && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
        && st.st_size > i64::from(MAX_DATA)
    {
        return Err(too_large());
    }
    // Files in /proc and /sys report size 0, so read until EOF, one byte past the cap
    // at most.
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = sys::read_fd(fd, &mut chunk).map_err(|errno| AgentError::Path {
            op: "read".to_string(),
            path: path.to_string(),
            errno,
        })?;
        if n == 0 {
            return Ok(data);
        }
        if data.len() + n > MAX_DATA as usize {
            return Err(too_large());
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

pub fn write_file(path: &str, data: &[u8], mode: Option<u32>) -> Result<Response, AgentError> {
    if data.len() > MAX_DATA as usize {
        return Err(AgentError::FileTooLarge {
            path: path.to_string(),
            cap: u64::from(MAX_DATA),
        });
    }
    let c_path = sys::cstring(path, "write_file", "path")?;
    // SAFETY: `c_path` is a NUL-terminated path alive for the call.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            mode.unwrap_or(0o644),
        )
    };
    if fd < 0 {
        return Err(sys::path_error("open", path));
    }
    let mut result = sys::write_all_fd(fd, data).map_err(|errno| AgentError::Path {
        op: "write".to_string(),
        path: path.to_string(),
        errno,
    });
    // An explicit mode must not be narrowed by the umask, nor left as it was when the
    // file already existed.
    if let (Ok(()), Some(mode)) = (&result, mode) {
        // SAFETY: fchmod on the descriptor opened above takes no pointers.
        if unsafe { libc::fchmod(fd, mode) } != 0 {
            result = Err(sys::path_error("chmod", path));
        }
    }
    // SAFETY: `fd` was opened above and has no other owner.
    if unsafe { libc::close(fd) } != 0 && result.is_ok() {
        result = Err(sys::path_error("close", path));
    }
    result.map(|()| Response::Done)
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
