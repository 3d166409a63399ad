//! `scripts/bench kernel`: raw syscall round trips through the agent — `getpid` and a
//! `write(2)` of a 1 MiB buffer to `/dev/null` — against `exec("true")` on the same VM.
//!
//! Run with `cargo bench -p provium --bench kernel`; `BENCH_RUNS` sets the run count.

mod common;

use anyhow::{bail, Result};
use provium::vm::{AgentChannel, Vm};
use provium_proto::{Request, Response, SyscallBuf, MAIN_CHANNEL};

use common::{batch_mean, ratio, report, Bench};

const SYS_WRITE: i64 = 1;
const SYS_OPEN: i64 = 2;
const SYS_GETPID: i64 = 39;
const BUFFER_BYTES: usize = 1 << 20;
/// Round trips per timed batch.
const BATCH: u32 = 20;

fn main() -> Result<()> {
    let bench = Bench::new("kernel")?;
    let vm = bench.boot("kernel", bench.profile(""), AgentChannel::VirtioSerial)?;
    let devnull = syscall(
        &vm,
        Request::Syscall {
            nr: SYS_OPEN,
            args: vec![0, libc::O_WRONLY as u64],
            bufs: vec![SyscallBuf {
                arg_idx: 0,
                data: b"/dev/null\0".to_vec(),
            }],
            ptrs: Vec::new(),
        },
    )?;
    if devnull < 0 {
        bail!("open /dev/null in the guest failed: errno {}", -devnull);
    }
    let getpid = Request::Syscall {
        nr: SYS_GETPID,
        args: Vec::new(),
        bufs: Vec::new(),
        ptrs: Vec::new(),
    };
    let write = Request::Syscall {
        nr: SYS_WRITE,
        args: vec![devnull as u64, 0, BUFFER_BYTES as u64],
        bufs: vec![SyscallBuf {
            arg_idx: 1,
            data: vec![0xa5; BUFFER_BYTES],
        }],
        ptrs: Vec::new(),
    };

    let (mut exec, mut pids, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.runs {
        exec.push(batch_mean(BATCH, || {
            let out = vm.exec("true")?;
            if !out.ok() {
                bail!("exec(\"true\") exited {}", out.exit_code);
            }
            Ok(())
        })?);
        pids.push(batch_mean(BATCH, || {
            let pid = syscall(&vm, getpid.clone())?;
            if pid <= 1 {
                bail!("getpid returned {pid}, expected the agent's serving process");
            }
            Ok(())
        })?);
        writes.push(batch_mean(BATCH, || {
            let written = syscall(&vm, write.clone())?;
            if written != BUFFER_BYTES as i64 {
                bail!("write of {BUFFER_BYTES} bytes to /dev/null returned {written}");
            }
            Ok(())
        })?);
    }
    println!("syscall round trips over virtio-serial (mean of {BATCH} per run)");
    report("exec(\"true\") (baseline)", &exec, "");
    report("syscall getpid (nr 39)", &pids, &ratio(&pids, &exec, None));
    report(
        "syscall write(/dev/null, 1 MiB buffer)",
        &writes,
        &format!(
            "{}; the buffer travels both ways (the answer returns it)",
            ratio(&writes, &exec, None)
        ),
    );
    Ok(())
}

/// One `Syscall` request on the main channel; its raw return value.
fn syscall(vm: &Vm, request: Request) -> Result<i64> {
    match vm.link().call(MAIN_CHANNEL, &request, vm.op_timeout())? {
        Response::Syscall { ret, .. } => Ok(ret),
        other => bail!("syscall answered {other:?}"),
    }
}
