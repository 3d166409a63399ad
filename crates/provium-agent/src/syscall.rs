//! Raw syscalls and ioctls with argument buffers copied into agent memory and
//! pointers patched into those buffers. Every index and offset is checked (by
//! `provium_agent::plan`) before anything is allocated or called.

use provium_agent::plan::{self, SyscallPlan};
use provium_proto::{AgentError, IoctlPtr, PtrPatch, Response, SyscallBuf, MAX_SYSCALL_ARGS};

use crate::sys;

fn raw_syscall(nr: i64, a: &[u64; MAX_SYSCALL_ARGS]) -> i64 {
    // SAFETY: the host asked for exactly this call; the agent vouches only for its own
    // memory. Every pointer the agent put in `a` is a live buffer of a `SyscallPlan`
    // (or the ioctl's data) that outlives the call; any other word is the host's
    // integer, and a bad address in it makes the kernel answer EFAULT.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    // The libc wrapper folds the kernel's -errno into -1 and errno; unfold it so the
    // caller sees the raw result.
    if ret == -1 {
        -i64::from(sys::errno())
    } else {
        ret
    }
}

fn perform(nr: i64, plan: SyscallPlan) -> Response {
    plan.perform(|args| raw_syscall(nr, args))
}

/// Performs `nr` with `args`, buffers and pointer patches; see `Request::Syscall`.
pub fn syscall(
    op: &str,
    nr: i64,
    args: &[u64],
    bufs: Vec<SyscallBuf>,
    ptrs: &[PtrPatch],
) -> Result<Response, AgentError> {
    Ok(perform(nr, plan::plan_syscall(op, args, bufs, ptrs)?))
}

pub fn ioctl(fd: i32, cmd: u64, data: Option<Vec<u8>>) -> Response {
    let mut a = [fd as i64 as u64, cmd, 0, 0, 0, 0];
    match data {
        None => Response::Ioctl {
            ret: raw_syscall(libc::SYS_ioctl, &a),
            data: None,
        },
        Some(mut data) => {
            a[2] = data.as_mut_ptr() as u64;
            let ret = raw_syscall(libc::SYS_ioctl, &a);
            Response::Ioctl {
                ret,
                data: plan::ioctl_returns_arg(cmd).then_some(data),
            }
        }
    }
}

pub fn ioctl_buf(
    fd: i32,
    cmd: u64,
    arg: Vec<u8>,
    ptrs: &[IoctlPtr],
) -> Result<Response, AgentError> {
    Ok(perform(
        libc::SYS_ioctl,
        plan::plan_ioctl_buf(fd, cmd, arg, ptrs)?,
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn ret_of(resp: &Response) -> i64 {
        match resp {
            Response::Syscall { ret, .. } | Response::Ioctl { ret, .. } => *ret,
            other => panic!("not a call result: {other:?}"),
        }
    }

    fn ptr(buf_idx: u32, ptr_offset: u64, data_len: u64, data: &[u8], output: bool) -> PtrPatch {
        PtrPatch {
            buf_idx,
            ptr_offset,
            data_len,
            data: data.to_vec(),
            output,
        }
    }

    /// An `iovec` with its base left for a pointer patch at offset 0.
    fn iovec(len: u64) -> Vec<u8> {
        [0u64.to_le_bytes(), len.to_le_bytes()].concat()
    }

    #[test]
    fn integer_syscall_returns_the_kernel_result() {
        let resp = syscall("syscall", libc::SYS_getpid, &[], vec![], &[]).unwrap();
        assert_eq!(ret_of(&resp), i64::from(std::process::id()));
    }

    #[test]
    fn failure_is_the_negative_errno() {
        let resp = syscall("syscall", libc::SYS_close, &[u64::MAX], vec![], &[]).unwrap();
        assert_eq!(ret_of(&resp), -i64::from(libc::EBADF));
    }

    #[test]
    fn a_buffer_argument_reaches_the_kernel() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd() as u64;
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: b"through write(2)".to_vec(),
            output: false,
        }];
        let resp = syscall("syscall", libc::SYS_write, &[fd, 0, 16], bufs, &[]).unwrap();
        // An input-only buffer does not travel back.
        assert_eq!(
            resp,
            Response::Syscall {
                ret: 16,
                bufs: vec![],
                outputs: vec![],
            }
        );
        let mut got = [0u8; 16];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through write(2)");
    }

    #[test]
    fn the_kernel_fills_a_buffer_that_comes_back() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(b"abc").unwrap();
        let fd = theirs.as_raw_fd() as u64;
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: vec![b'-'; 5],
            output: true,
        }];
        let resp = syscall("syscall", libc::SYS_read, &[fd, 0, 5], bufs, &[]).unwrap();
        assert_eq!(
            resp,
            Response::Syscall {
                ret: 3,
                bufs: vec![b"abc--".to_vec()],
                outputs: vec![],
            }
        );
    }

    #[test]
    fn writev_follows_a_patched_pointer() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd() as u64;
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: iovec(5),
            output: true,
        }];
        let resp = syscall(
            "syscall",
            libc::SYS_writev,
            &[fd, 0, 1],
            bufs,
            &[ptr(1, 0, 5, b"hello", false)],
        )
        .unwrap();
        assert_eq!(ret_of(&resp), 5);
        let mut got = [0u8; 5];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn readv_fills_an_output_patch() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(b"xyz").unwrap();
        let fd = theirs.as_raw_fd() as u64;
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: iovec(4),
            output: true,
        }];
        let resp = syscall(
            "syscall",
            libc::SYS_readv,
            &[fd, 0, 1],
            bufs,
            &[ptr(1, 0, 4, b"", true)],
        )
        .unwrap();
        let Response::Syscall { ret, outputs, .. } = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(ret, 3);
        assert_eq!(outputs, vec![b"xyz\0".to_vec()]);
    }

    #[test]
    fn an_invalid_plan_calls_nothing() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd() as u64;
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: b"never sent".to_vec(),
            output: true,
        }];
        let err = syscall(
            "syscall",
            libc::SYS_write,
            &[fd, 0, 10],
            bufs,
            &[ptr(1, 4, 1, b"", false)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("offset 4 does not fit"), "{err}");
        ours.set_nonblocking(true).unwrap();
        let mut got = [0u8; 16];
        assert_eq!(
            ours.read(&mut got).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn legacy_ioctl_returns_its_argument() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(b"1234567").unwrap();
        let resp = ioctl(theirs.as_raw_fd(), libc::FIONREAD, Some(vec![0xff; 4]));
        assert_eq!(
            resp,
            Response::Ioctl {
                ret: 0,
                data: Some(7i32.to_le_bytes().to_vec()),
            }
        );
    }

    #[test]
    fn write_only_ioctl_returns_no_argument() {
        // _IOW('T', 0x31, int): TIOCSPTLCK, which a socket refuses.
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let resp = ioctl(ours.as_raw_fd(), 0x4004_5431, Some(vec![0; 4]));
        assert_eq!(
            resp,
            Response::Ioctl {
                ret: -i64::from(libc::ENOTTY),
                data: None,
            }
        );
        let resp = ioctl(ours.as_raw_fd(), 0x4004_5431, None);
        assert_eq!(ret_of(&resp), -i64::from(libc::ENOTTY));
    }

    #[test]
    fn ioctl_buf_passes_the_struct_by_pointer() {
        // FIONREAD through IoctlBuf: the kernel writes the count into the struct.
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(b"12").unwrap();
        let resp = ioctl_buf(theirs.as_raw_fd(), libc::FIONREAD, vec![0; 4], &[]).unwrap();
        assert_eq!(
            resp,
            Response::Syscall {
                ret: 0,
                bufs: vec![2i32.to_le_bytes().to_vec()],
                outputs: vec![],
            }
        );
    }
}
