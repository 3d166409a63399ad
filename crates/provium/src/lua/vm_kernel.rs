//! The kernel-facing VM methods (SPEC §3): raw syscalls with buffers and pointer
//! patching, ioctls, background jobs and workers. Each converts its Lua arguments
//! (`vm_args`), makes one agent-client call, and converts the answer back.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, MultiValue, Table, Value};

use super::options;
use super::vm_args::{self as args, ArgError};
use super::vm_handle::{arg, fail, lua_bytes, returns, LuaVm, LuaWorker, Method, VmApiError};
use super::vm_values::output_string;
use crate::vm::client::{JobStatus, SyscallCall, SyscallOutcome};

pub(super) const METHODS: &[(&str, Method)] = &[
    ("syscall", syscall),
    ("syscall_buf", syscall_buf),
    ("syscall_bufs", syscall_bufs),
    ("syscall_ptr", syscall_ptr),
    ("ioctl", ioctl),
    ("ioctl_buf", ioctl_buf),
    ("background", background),
    ("job_wait", job_wait),
    ("job_kill", job_kill),
    ("spawn", spawn),
];

const SPAWN_OPTIONS: &[&str] = &["thread"];

fn syscall_number(op: &'static str, a: &[Value]) -> Result<i64, ArgError> {
    args::integer(op, arg(a, 0), "argument 1 (syscall number)")
}

fn syscall(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "syscall";
    let nr = syscall_number(OP, a).map_err(|e| fail(lua, e))?;
    let argv = args::syscall_args(OP, a.get(1..).unwrap_or(&[]), &[]).map_err(|e| fail(lua, e))?;
    let call = SyscallCall {
        nr,
        args: argv,
        ..SyscallCall::default()
    };
    let ret = this
        .with_client(OP, |c| c.syscall(call))
        .map_err(|e| fail(lua, e))?
        .ret;
    Ok(returns([Value::Integer(ret)]))
}

fn syscall_buf(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "syscall_buf";
    let call = (|| -> Result<SyscallCall, ArgError> {
        let nr = syscall_number(OP, a)?;
        let rest = a.get(3..).unwrap_or(&[]);
        args::check_arg_count(OP, rest.len())?;
        let arg_idx = args::buffer_index(OP, arg(a, 1), "argument 2 (buffer index)", rest.len())?;
        let data = args::bytes(OP, arg(a, 2), "argument 3 (data)")?;
        Ok(SyscallCall {
            nr,
            args: args::syscall_args(OP, rest, &[arg_idx])?,
            // `syscall_buf` returns the result only: the buffer does not travel back.
            bufs: vec![provium_proto::SyscallBuf {
                arg_idx,
                data,
                output: false,
            }],
            ptrs: Vec::new(),
        })
    })()
    .map_err(|e| fail(lua, e))?;
    let ret = this
        .with_client(OP, |c| c.syscall(call))
        .map_err(|e| fail(lua, e))?
        .ret;
    Ok(returns([Value::Integer(ret)]))
}

/// The result, then each buffer after the call, then each output sub-buffer.
fn syscall_results(lua: &Lua, outcome: SyscallOutcome) -> mlua::Result<MultiValue> {
    let mut values = vec![Value::Integer(outcome.ret)];
    for bytes in outcome.bufs.iter().chain(&outcome.outputs) {
        values.push(lua_bytes(lua, bytes)?);
    }
    Ok(returns(values))
}

fn syscall_bufs(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    buffered_syscall(lua, this, a, "syscall_bufs", false)
}

fn syscall_ptr(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    buffered_syscall(lua, this, a, "syscall_ptr", true)
}

/// `nr, {[idx] = data}, [ptrs,] a1..`: the buffer table, then (for `syscall_ptr`) the
/// pointer specs, then the integer arguments.
fn buffered_syscall(
    lua: &Lua,
    this: &LuaVm,
    a: &[Value],
    op: &'static str,
    with_ptrs: bool,
) -> mlua::Result<MultiValue> {
    let call = (|| -> Result<SyscallCall, ArgError> {
        let nr = syscall_number(op, a)?;
        let first_arg = if with_ptrs { 3 } else { 2 };
        let rest = a.get(first_arg..).unwrap_or(&[]);
        args::check_arg_count(op, rest.len())?;
        let table = args::table(op, arg(a, 1), "argument 2 (buffers)")?;
        let bufs = args::buffers(op, &table, rest.len())?;
        let ptrs = if with_ptrs {
            let ptr_table = args::table(op, arg(a, 2), "argument 3 (pointers)")?;
            args::ptr_patches(op, &ptr_table, &bufs)?
        } else {
            Vec::new()
        };
        let indices: Vec<u32> = bufs.iter().map(|b| b.arg_idx).collect();
        Ok(SyscallCall {
            nr,
            args: args::syscall_args(op, rest, &indices)?,
            bufs,
            ptrs,
        })
    })()
    .map_err(|e| fail(lua, e))?;
    let outcome = this
        .with_client(op, |c| c.syscall(call))
        .map_err(|e| fail(lua, e))?;
    syscall_results(lua, outcome)
}

fn ioctl_target(op: &'static str, a: &[Value]) -> Result<(i32, u64), ArgError> {
    let fd = args::int32(op, arg(a, 0), "argument 1 (fd)")?;
    // Two's complement keeps command numbers with the top bit set exact.
    let cmd = args::integer(op, arg(a, 1), "argument 2 (ioctl command)")? as u64;
    Ok((fd, cmd))
}

fn ioctl(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "ioctl";
    let (fd, cmd, data) = (|| -> Result<_, ArgError> {
        let (fd, cmd) = ioctl_target(OP, a)?;
        let data = match arg(a, 2) {
            Value::Nil => None,
            value => Some(args::bytes(OP, value, "argument 3 (data)")?),
        };
        Ok((fd, cmd, data))
    })()
    .map_err(|e| fail(lua, e))?;
    let (ret, data) = this
        .with_client(OP, |c| c.ioctl(fd, cmd, data))
        .map_err(|e| fail(lua, e))?;
    let data = match data {
        Some(bytes) => lua_bytes(lua, &bytes)?,
        None => Value::Nil,
    };
    Ok(returns([Value::Integer(ret), data]))
}

fn ioctl_buf(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "ioctl_buf";
    let (fd, cmd, arg_struct, specs) = (|| -> Result<_, ArgError> {
        let (fd, cmd) = ioctl_target(OP, a)?;
        let arg_struct = args::bytes(OP, arg(a, 2), "argument 3 (struct)")?;
        let specs = match arg(a, 3) {
            Value::Nil => Vec::new(),
            value => {
                let table = args::table(OP, value, "argument 4 (pointer specs)")?;
                args::ioctl_ptrs(OP, &table)?
            }
        };
        Ok((fd, cmd, arg_struct, specs))
    })()
    .map_err(|e| fail(lua, e))?;
    let outcome = this
        .with_client(OP, |c| c.ioctl_buf(fd, cmd, arg_struct, specs))
        .map_err(|e| fail(lua, e))?;
    syscall_results(lua, outcome)
}

fn background(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd =
        args::text("background", arg(a, 0), "argument 1 (command)").map_err(|e| fail(lua, e))?;
    let job = this
        .with_client("background", |c| c.background(&cmd))
        .map_err(|e| fail(lua, e))?;
    let table = lua.create_table()?;
    // Ids are opaque 64-bit values: kept bit-exact.
    table.set("id", job.id as i64)?;
    table.set("pid", job.pid)?;
    Ok(returns([Value::Table(table)]))
}

/// A job given as the table `background` returned, or as its id.
fn job_id(op: &'static str, value: &Value) -> Result<u64, ArgError> {
    match value {
        Value::Table(job) => {
            let id: Value = job.get("id").unwrap_or(Value::Nil);
            if id.is_nil() {
                return Err(ArgError::Missing {
                    op,
                    what: "argument 1 (job).id".to_string(),
                });
            }
            args::integer(op, &id, "job.id").map(|id| id as u64)
        }
        other => args::integer(op, other, "argument 1 (job)").map(|id| id as u64),
    }
}

fn status_table(lua: &Lua, status: JobStatus) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set("exit_code", status.exit_code)?;
    table.set("stdout", output_string(lua, status.stdout)?)?;
    table.set("stderr", output_string(lua, status.stderr)?)?;
    table.set("running", status.running)?;
    Ok(table)
}

fn job_wait(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "job_wait";
    let (id, wait) = (|| -> Result<_, ArgError> {
        let id = job_id(OP, arg(a, 0))?;
        let wait = match arg(a, 1) {
            Value::Nil => 0.0,
            value => args::seconds(OP, value, "argument 2 (timeout)")?,
        };
        Ok((id, Duration::from_secs_f64(wait)))
    })()
    .map_err(|e| fail(lua, e))?;
    let status = this
        .with_client(OP, |c| c.job_wait(id, wait))
        .map_err(|e| fail(lua, e))?;
    Ok(returns([Value::Table(status_table(lua, status)?)]))
}

fn job_kill(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let id = job_id("job_kill", arg(a, 0)).map_err(|e| fail(lua, e))?;
    let status = this
        .with_client("job_kill", |c| c.job_kill(id))
        .map_err(|e| fail(lua, e))?;
    Ok(returns([Value::Table(status_table(lua, status)?)]))
}

fn spawn(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "spawn";
    this.vm_only(OP).map_err(|e| fail(lua, e))?;
    let opts =
        options::read(arg(a, 0), "argument 1 (options)", SPAWN_OPTIONS).map_err(|source| {
            fail(
                lua,
                VmApiError::Options {
                    subject: this.to_string(),
                    op: OP,
                    source,
                },
            )
        })?;
    let thread = options::get(&opts, "thread")
        .map_err(|source| {
            fail(
                lua,
                VmApiError::Options {
                    subject: this.to_string(),
                    op: OP,
                    source,
                },
            )
        })
        .and_then(|value| args::flag(OP, &value, "thread").map_err(|e| fail(lua, e)))?;
    let worker = this
        .with_client(OP, |c| c.spawn(thread))
        .map_err(|e| fail(lua, e))?;
    let worker = lua.create_any_userdata(LuaVm {
        handle: Rc::clone(&this.handle),
        worker: Some(LuaWorker {
            worker,
            killed: Cell::new(false),
        }),
    })?;
    Ok(returns([Value::UserData(worker)]))
}
