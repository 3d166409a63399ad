//! `scripts/bench kernel`: raw syscall round trips through the agent — `getpid`, and
//! `write(2)` of a 1 MiB buffer to `/dev/null` as `syscall_buf` makes it — against
//! `exec("true")`, and the 1 MiB write against a 1 MiB `write_file`, on the same VM.
//!
//! Run with `cargo bench -p provium --bench kernel`; `BENCH_RUNS` sets the run count.

mod common;

use anyhow::{bail, Result};
use provium::vm::client::SyscallCall;
use provium::vm::{AgentChannel, Vm};
use provium_proto::SyscallBuf;

use common::{batch_mean, ratio, ratio_of, report, Bench};

const SYS_WRITE: i64 = 1;
const SYS_OPEN: i64 = 2;
const SYS_GETPID: i64 = 39;
const BUFFER_BYTES: usize = 1 << 20;
/// Round trips per timed batch.
const BATCH: u32 = 20;
/// `syscall_buf` of 1 MiB against `write_file` of 1 MiB: the buffer crosses the
/// channel once in both, so the syscall should cost little more.
const WRITE_TARGET: f64 = 1.2;

fn main() -> Result<()> {
    let bench = Bench::new("kernel")?;
    let vm = bench.boot("kernel", bench.profile(""), AgentChannel::VirtioSerial)?;
    let devnull = syscall(
        &vm,
        SyscallCall {
            nr: SYS_OPEN,
            args: vec![0, libc::O_WRONLY as u64],
            bufs: vec![SyscallBuf {
                arg_idx: 0,
                data: b"/dev/null\0".to_vec(),
                output: false,
            }],
            ..SyscallCall::default()
        },
    )?;
    if devnull < 0 {
        bail!("open /dev/null in the guest failed: errno {}", -devnull);
    }
    let getpid = SyscallCall {
        nr: SYS_GETPID,
        ..SyscallCall::default()
    };
    let buffer = vec![0xa5; BUFFER_BYTES];
    // What `vm:syscall_buf(1, 1, buffer, fd, 0, #buffer)` sends.
    let write = SyscallCall {
        nr: SYS_WRITE,
        args: vec![devnull as u64, 0, BUFFER_BYTES as u64],
        bufs: vec![SyscallBuf {
            arg_idx: 1,
            data: buffer.clone(),
            output: false,
        }],
        ..SyscallCall::default()
    };

    let (mut exec, mut pids, mut writes, mut files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        files.push(batch_mean(BATCH, || {
            Ok(vm.write_file("/tmp/bench-1m.bin", &buffer)?)
        })?);
    }
    println!("syscall round trips over virtio-serial (mean of {BATCH} per run)");
    report("exec(\"true\") (baseline)", &exec, "");
    report("syscall getpid (nr 39)", &pids, &ratio(&pids, &exec, None));
    report("write_file of 1 MiB (baseline)", &files, "");
    let r = ratio_of(&writes, &files);
    let verdict = if r <= WRITE_TARGET {
        format!("target <= {WRITE_TARGET}: met")
    } else {
        format!("target <= {WRITE_TARGET}: MISSED")
    };
    report(
        "syscall_buf write(/dev/null, 1 MiB)",
        &writes,
        &format!("{r:.2} x write_file; {verdict}"),
    );
    Ok(())
}

/// One syscall as the Lua bindings make it (`AgentClient::syscall`); its result.
fn syscall(vm: &Vm, call: SyscallCall) -> Result<i64> {
    Ok(vm.client().syscall(call)?.ret)
}
