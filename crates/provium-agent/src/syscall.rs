//! Raw syscalls and ioctls with argument buffers copied into agent memory and
//! pointers patched into those buffers. Every index and offset is checked before
//! anything is allocated or called.

use provium_proto::{
    AgentError, IoctlPtr, PtrPatch, Response, SyscallBuf, MAX_DATA, MAX_SYSCALL_ARGS,
};

use crate::sys;

fn invalid(op: &str, reason: String) -> AgentError {
    AgentError::InvalidRequest {
        op: op.to_string(),
        reason,
    }
}

fn raw_syscall(nr: i64, a: &[u64; MAX_SYSCALL_ARGS]) -> i64 {
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    // The libc wrapper folds the kernel's -errno into -1 and errno; unfold it so the
    // caller sees the raw result.
    if ret == -1 {
        -i64::from(sys::errno())
    } else {
        ret
    }
}

/// Performs `nr` with `args`, buffers and pointer patches; see `Request::Syscall`.
pub fn syscall(
    op: &str,
    nr: i64,
    args: &[u64],
    bufs: Vec<SyscallBuf>,
    ptrs: &[PtrPatch],
) -> Result<Response, AgentError> {
    if args.len() > MAX_SYSCALL_ARGS {
        return Err(invalid(
            op,
            format!(
                "{} arguments given; a syscall takes at most {MAX_SYSCALL_ARGS}",
                args.len()
            ),
        ));
    }
    let mut a = [0u64; MAX_SYSCALL_ARGS];
    a[..args.len()].copy_from_slice(args);
    let mut bufs = bufs;
    bufs.sort_by_key(|b| b.arg_idx);
    for (i, b) in bufs.iter().enumerate() {
        if b.arg_idx as usize >= MAX_SYSCALL_ARGS {
            return Err(invalid(
                op,
                format!(
                    "buffer argument index {} is outside the {MAX_SYSCALL_ARGS} syscall arguments (0-based)",
                    b.arg_idx
                ),
            ));
        }
        if i > 0 && bufs[i - 1].arg_idx == b.arg_idx {
            return Err(invalid(
                op,
                format!("two buffers for argument {}", b.arg_idx),
            ));
        }
    }
    let mut subs: Vec<Vec<u8>> = Vec::with_capacity(ptrs.len());
    let mut patches = Vec::with_capacity(ptrs.len());
    for (i, p) in ptrs.iter().enumerate() {
        let target = bufs
            .iter()
            .position(|b| b.arg_idx == p.buf_idx)
            .ok_or_else(|| {
                invalid(
                    op,
                    format!(
                        "pointer {i} names buffer {} but no buffer is passed as argument {}",
                        p.buf_idx, p.buf_idx
                    ),
                )
            })?;
        let len = bufs[target].data.len();
        if p.ptr_offset
            .checked_add(8)
            .is_none_or(|end| end > len as u64)
        {
            return Err(invalid(
                op,
                format!(
                    "pointer {i} at offset {} does not fit 8 bytes in the {len}-byte buffer of argument {}",
                    p.ptr_offset, p.buf_idx
                ),
            ));
        }
        if p.data_len > u64::from(MAX_DATA) {
            return Err(invalid(
                op,
                format!(
                    "pointer {i} asks for {} bytes; the cap is {MAX_DATA}",
                    p.data_len
                ),
            ));
        }
        if p.data.len() as u64 > p.data_len {
            return Err(invalid(
                op,
                format!(
                    "pointer {i} carries {} bytes of data for a {}-byte buffer",
                    p.data.len(),
                    p.data_len
                ),
            ));
        }
        let mut sub = vec![0u8; p.data_len as usize];
        sub[..p.data.len()].copy_from_slice(&p.data);
        subs.push(sub);
        patches.push((target, p.ptr_offset as usize));
    }
    // Vectors are not resized from here on, so the addresses stay valid for the call.
    for (sub, &(target, offset)) in subs.iter_mut().zip(&patches) {
        let addr = sub.as_mut_ptr() as u64;
        bufs[target].data[offset..offset + 8].copy_from_slice(&addr.to_le_bytes());
    }
    for b in bufs.iter_mut() {
        a[b.arg_idx as usize] = b.data.as_mut_ptr() as u64;
    }
    let ret = raw_syscall(nr, &a);
    let outputs = subs
        .into_iter()
        .zip(ptrs)
        .filter(|(_, p)| p.output)
        .map(|(sub, _)| sub)
        .collect();
    Ok(Response::Syscall {
        ret,
        bufs: bufs.into_iter().map(|b| b.data).collect(),
        outputs,
    })
}

/// `_IOC_DIR` bits of an ioctl number: 1 = write, 2 = read.
fn ioctl_dir(cmd: u64) -> u64 {
    (cmd >> 30) & 3
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
            let dir = ioctl_dir(cmd);
            // Legacy ioctls (FIONREAD, TCGETS) encode no direction yet fill the buffer.
            let reads = dir & 2 != 0 || dir == 0;
            Response::Ioctl {
                ret,
                data: reads.then_some(data),
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
    const ARG: u32 = 2;
    let patches: Vec<PtrPatch> = ptrs
        .iter()
        .map(|p| PtrPatch {
            buf_idx: ARG,
            ptr_offset: p.ptr_offset,
            data_len: p.buf_len,
            data: p.data.clone(),
            output: p.output,
        })
        .collect();
    syscall(
        "ioctl_buf",
        libc::SYS_ioctl,
        &[fd as i64 as u64, cmd],
        vec![SyscallBuf {
            arg_idx: ARG,
            data: arg,
        }],
        &patches,
    )
}
