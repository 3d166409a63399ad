//! The Lua VM API (SPEC §3): `provium.create`, `provium.shutdown_all`, and the
//! methods of VM handles and of their workers.
//!
//! A binding only converts: Lua arguments into Rust values (`vm_args`, `options`),
//! one call into the VM layer (the file's [`Fleet`](crate::vm::fleet::Fleet) for life
//! cycle, an [`AgentClient`] for everything a guest does), and the answer back into
//! Lua values (`vm_values`). One userdata type serves VMs and workers: a [`LuaVm`] is
//! a shared [`VmHandle`] plus, for a worker, the worker's own client. The kernel-facing
//! methods (syscalls, ioctls, jobs, workers) are in `vm_kernel`.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, Lua, MultiValue, Table, UserDataFields, UserDataMethods, UserDataRef,
    Value,
};
use thiserror::Error;

use super::options::{self, OptionError};
use super::vm_args::{self as args, ArgError};
use super::vm_kernel;
use super::vm_values::{self, json_to_lua, output_string};
use super::{plain_errors, raise, FileContext};
use crate::pool::parse_size_mib;
use crate::vm::accel::{Accel, AccelError};
use crate::vm::client::{AgentClient, ClientError, ExecOutput, Worker};
use crate::vm::fleet::{HandleError, Stop, VmHandle};
use crate::vm::host::{self, ProfileError};
use crate::vm::options::{BootOptions, BOOT_OPTIONS};
use crate::vm::qemu::DiskFormat;
use crate::vm::{Disk, StartError, StartFrom, Vm, VmConfig};

const WAIT_UNTIL: &str = include_str!("wait_until.lua");
const WAIT_UNTIL_OPTIONS: &[&str] = &["timeout", "interval", "desc"];

/// A failed VM method; every variant names the VM (or worker) it concerns.
#[derive(Debug, Error)]
pub enum VmApiError {
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// Reading an option table failed (e.g. a raising `__index`).
    #[error(transparent)]
    Lua(#[from] mlua::Error),
    #[error("{subject}: {op}: {source}")]
    Options {
        subject: String,
        op: &'static str,
        source: OptionError,
    },
    #[error("VM {vm}: boot: {reason}")]
    BootOption { vm: String, reason: String },
    #[error("{worker}: {op} is not available on a worker (a worker lives and ends with its VM; end it with worker:kill())")]
    NotOnWorker { worker: String, op: &'static str },
    #[error("{worker}: {op}: the worker was killed (worker:kill())")]
    WorkerKilled { worker: String, op: &'static str },
    /// SPEC §3 fixes this message: `command failed (exit N): cmd`, then stderr.
    #[error("command failed (exit {exit_code}): {cmd}{}", stderr_suffix(stderr))]
    CommandFailed {
        exit_code: i32,
        cmd: String,
        stderr: String,
    },
    #[error("{subject}: json: invalid JSON from command {cmd:?}: {source}")]
    Json {
        subject: String,
        cmd: String,
        source: serde_json::Error,
    },
}

impl VmApiError {
    /// Whether the infrastructure failed (a boot, the pool, QEMU, the agent), which
    /// makes the outcome `error` rather than `failed`.
    fn is_infrastructure(&self) -> bool {
        match self {
            VmApiError::Accel(_) | VmApiError::Start(_) => true,
            VmApiError::Profile(ProfileError::Default(_)) => true,
            VmApiError::Client(error) => error.is_infrastructure(),
            _ => false,
        }
    }
}

/// Lines of console carried in a boot error: enough to see why when a script
/// catches it; a failing file's report shows the full 20-line tail below anyway.
const BOOT_ERROR_CONSOLE_LINES: usize = 5;

fn console_suffix(tail: Option<&str>) -> String {
    let Some(tail) = tail.map(str::trim_end).filter(|t| !t.is_empty()) else {
        return String::new();
    };
    let lines: Vec<&str> = tail.lines().collect();
    let last = &lines[lines.len().saturating_sub(BOOT_ERROR_CONSOLE_LINES)..];
    format!("\nlast console lines:\n{}", last.join("\n"))
}

fn stderr_suffix(stderr: &str) -> String {
    match stderr.trim_end() {
        "" => String::new(),
        text => format!("\n{text}"),
    }
}

/// Raises a method failure in Lua, remembering infrastructure failures for the
/// file's outcome. A boot failure carries the last console lines.
pub(super) fn fail(lua: &Lua, error: impl Into<VmApiError>) -> mlua::Error {
    let error = error.into();
    let broke = error.is_infrastructure();
    let mut message = error.to_string();
    if let VmApiError::Start(StartError::Boot(boot)) = &error {
        message.push_str(&console_suffix(boot.console_tail()));
    }
    raise(lua, message, broke)
}

/// The Lua userdata behind VM handles and workers.
pub struct LuaVm {
    pub(super) handle: Rc<VmHandle>,
    pub(super) worker: Option<LuaWorker>,
}

/// A worker as its handle knows it: its client, and whether `kill()` ended it.
pub(super) struct LuaWorker {
    pub(super) worker: Worker,
    pub(super) killed: Cell<bool>,
}

impl std::fmt::Display for LuaVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.worker {
            None => write!(f, "VM {}", self.handle.name()),
            Some(w) => f.write_str(w.worker.client.subject()),
        }
    }
}

impl LuaVm {
    /// The client this handle's calls go through, or why there is none.
    pub(super) fn client(&self, op: &'static str) -> Result<AgentClient, VmApiError> {
        let main = self.handle.client(op)?;
        match &self.worker {
            None => Ok(main),
            Some(w) if w.killed.get() => Err(VmApiError::WorkerKilled {
                worker: self.to_string(),
                op,
            }),
            Some(w) => Ok(w.worker.client.clone()),
        }
    }

    /// Runs `call` on this handle's client; a VM found broken is ended at once.
    pub(super) fn with_client<T>(
        &self,
        op: &'static str,
        call: impl FnOnce(&AgentClient) -> Result<T, ClientError>,
    ) -> Result<T, VmApiError> {
        let client = self.client(op)?;
        Ok(self.handle.observe(call(&client))?)
    }

    /// Refuses VM-only operations on a worker.
    pub(super) fn vm_only(&self, op: &'static str) -> Result<(), VmApiError> {
        match &self.worker {
            Some(_) => Err(VmApiError::NotOnWorker {
                worker: self.to_string(),
                op,
            }),
            None => Ok(()),
        }
    }
}

/// Installs `provium.create`, `provium.shutdown_all` and the VM handle type.
pub fn install(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    vm_values::register(lua)?;
    let methods = lua.create_table()?;
    for &(name, method) in METHODS.iter().chain(vm_kernel::METHODS) {
        let function = lua.create_function(move |lua, call: MultiValue| {
            let mut values = call.into_vec();
            let this = if values.is_empty() {
                Value::Nil
            } else {
                values.remove(0)
            };
            let this = self_handle(name, &this)?;
            method(lua, &this, &values)
        })?;
        methods.raw_set(name, plain_errors(lua, function)?)?;
    }
    methods.raw_set("wait_until", wait_until(lua)?)?;

    let index = lua.create_function(move |lua, (ud, key): (AnyUserData, Value)| {
        let method: Value = methods.raw_get(key.clone())?;
        if !method.is_nil() {
            return Ok(method);
        }
        field(lua, &*ud.borrow::<LuaVm>()?, &key)
    })?;
    lua.register_userdata_type::<LuaVm>(move |reg| {
        reg.add_meta_field("__index", index);
        reg.add_meta_field("__name", "provium VM");
        reg.add_meta_method("__tostring", |_, this, ()| Ok(this.to_string()));
    })?;
    provium.set("create", plain_errors(lua, lua.create_function(create)?)?)?;
    provium.set(
        "shutdown_all",
        plain_errors(lua, lua.create_function(shutdown_all)?)?,
    )?;
    Ok(())
}

pub(super) type Method = fn(&Lua, &LuaVm, &[Value]) -> mlua::Result<MultiValue>;

const METHODS: &[(&str, Method)] = &[
    ("boot", boot),
    ("exec", exec),
    ("json", json),
    ("write_file", write_file),
    ("read_file", read_file),
    ("dmesg", dmesg),
    ("mount_vfs", mount_vfs),
    ("shutdown", shutdown),
    ("kill", kill),
];

fn self_handle(op: &str, this: &Value) -> mlua::Result<UserDataRef<LuaVm>> {
    if let Value::UserData(ud) = this {
        if let Ok(vm) = ud.borrow::<LuaVm>() {
            return Ok(vm);
        }
    }
    Err(mlua::Error::RuntimeError(format!(
        "{op}: call it as a method, vm:{op}(...) with a colon (got a {} value as the VM)",
        this.type_name()
    )))
}

/// Read-only fields of a handle: `name`, `profile`, `running`, and for workers `pid`
/// and `channel`.
fn field(lua: &Lua, this: &LuaVm, key: &Value) -> mlua::Result<Value> {
    let Value::String(key) = key else {
        return Ok(Value::Nil);
    };
    let worker = this.worker.as_ref();
    Ok(match key.to_string_lossy().as_str() {
        "name" => Value::String(lua.create_string(this.handle.name())?),
        "profile" => Value::String(lua.create_string(this.handle.profile())?),
        "running" => {
            Value::Boolean(this.handle.is_running() && !worker.is_some_and(|w| w.killed.get()))
        }
        "pid" => worker.map_or(Value::Nil, |w| Value::Integer(w.worker.pid.into())),
        "channel" => worker.map_or(Value::Nil, |w| Value::Integer(w.worker.channel.into())),
        _ => Value::Nil,
    })
}

pub(super) fn arg(values: &[Value], index: usize) -> &Value {
    values.get(index).unwrap_or(&Value::Nil)
}

pub(super) fn returns(values: impl IntoIterator<Item = Value>) -> MultiValue {
    values.into_iter().collect()
}

pub(super) fn lua_bytes(lua: &Lua, bytes: &[u8]) -> mlua::Result<Value> {
    lua.create_string(bytes).map(Value::String)
}

/// Gives a booted `vm` (e.g. one resumed from a fixture snapshot) a handle in the
/// running file: its console is registered for the report and the log, and the file
/// ends it like any VM it created. `profile` is what `vm.profile` reads.
pub fn adopt(lua: &Lua, vm: Vm, profile: &str) -> mlua::Result<AnyUserData> {
    let ctx = FileContext::of(lua)?;
    ctx.register_console(vm.console_log().to_path_buf());
    let handle = ctx.fleet().adopt(vm, profile);
    lua.create_any_userdata(LuaVm {
        handle,
        worker: None,
    })
}

fn create(lua: &Lua, profile: Value) -> mlua::Result<AnyUserData> {
    let ctx = FileContext::of(lua)?;
    let profile = match &profile {
        Value::Nil => host::DEFAULT_PROFILE.to_string(),
        other => {
            args::text("create", other, "argument 1 (profile name)").map_err(|e| fail(lua, e))?
        }
    };
    host::check_profile_name(&ctx.run().config, &profile)
        .map_err(|e| fail(lua, ProfileError::from(e)))?;
    let handle = ctx.fleet().create(ctx.name(), &profile);
    lua.create_any_userdata(LuaVm {
        handle,
        worker: None,
    })
}

/// Shuts down every running VM of the file, in parallel (each may wait for its guest).
fn shutdown_all(lua: &Lua, (): ()) -> mlua::Result<()> {
    let ctx = FileContext::of(lua)?;
    for (name, note) in ctx.fleet().shutdown_all() {
        ctx.log(&format!("VM {name}: {note}\n"));
    }
    Ok(())
}

/// `vm:boot(opts)`'s table as [`BootOptions`]; relative host paths resolve against
/// `root` (the project root).
fn boot_options(vm: &str, opts: &Value, root: &Path) -> Result<BootOptions, VmApiError> {
    let bad = |reason: String| VmApiError::BootOption {
        vm: vm.to_string(),
        reason,
    };
    let opts = options::read(opts, "argument 1 (options)", &BOOT_OPTIONS)
        .map_err(|e| bad(e.to_string()))?;
    let get = |key: &str| options::get(&opts, key).map_err(|e| bad(e.to_string()));
    let mut options = BootOptions::default();
    match get("memory")? {
        Value::Nil => {}
        Value::String(s) => {
            options.memory_mib =
                parse_size_mib(&s.to_string_lossy()).map_err(|e| bad(format!("memory: {e}")))?
        }
        other => options.memory_mib = args::count("boot", &other, "memory (MiB)")?,
    }
    match get("cpus")? {
        Value::Nil => {}
        value => {
            let cpus = args::count("boot", &value, "cpus")?;
            options.cpus = u32::try_from(cpus)
                .map_err(|_| bad(format!("cpus must be at most {}, not {cpus}", u32::MAX)))?;
        }
    }
    match get("files")? {
        Value::Nil => {}
        value => {
            let files = args::table("boot", &value, "files")?;
            for pair in files.pairs::<Value, Value>() {
                let (guest, host) = pair.map_err(|e| bad(e.to_string()))?;
                let guest_path = args::text("boot", &guest, "a files key (guest path)")?;
                let host_path = args::text("boot", &host, &format!("files['{guest_path}']"))?;
                options.add_file(guest_path, root.join(host_path));
            }
        }
    }
    match get("disks")? {
        Value::Nil => {}
        value => {
            let disks = args::table("boot", &value, "disks")?;
            for i in 1..=disks.raw_len() {
                options.disks.push(disk(vm, &disks.raw_get(i)?, i, root)?);
            }
        }
    }
    options.validate().map_err(bad)?;
    Ok(options)
}

/// One `disks` entry: `{path, format = "raw"|"qcow2", readonly = false}`.
fn disk(vm: &str, value: &Value, i: usize, root: &Path) -> Result<Disk, VmApiError> {
    let what = format!("disks[{i}]");
    let bad = |reason: String| VmApiError::BootOption {
        vm: vm.to_string(),
        reason,
    };
    let disk = args::table("boot", value, &what)?;
    let path = match disk.get::<Value>("path")? {
        Value::Nil => disk.get::<Value>(1)?,
        named => named,
    };
    if path.is_nil() {
        return Err(bad(format!("{what} has no path (give it as [1] or path=)")));
    }
    let path = args::text("boot", &path, &format!("{what}.path"))?;
    let format = match disk.get::<Value>("format")? {
        Value::Nil => DiskFormat::Raw,
        value => match args::text("boot", &value, &format!("{what}.format"))?.as_str() {
            "raw" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            other => {
                return Err(bad(format!(
                    "{what}.format is '{other}'; use \"raw\" or \"qcow2\""
                )))
            }
        },
    };
    let readonly = args::flag(
        "boot",
        &disk.get::<Value>("readonly")?,
        &format!("{what}.readonly"),
    )?;
    Ok(Disk {
        path: root.join(path),
        format,
        readonly,
    })
}

fn boot(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    this.vm_only("boot").map_err(|e| fail(lua, e))?;
    let ctx = FileContext::of(lua)?;
    let handle = &this.handle;
    handle.check_bootable().map_err(|e| fail(lua, e))?;
    let run = ctx.run();
    let options =
        boot_options(handle.name(), arg(a, 0), &run.project_root).map_err(|e| fail(lua, e))?;
    let profile = run
        .vm_host
        .boot_profile(&run.config, handle.profile())
        .map_err(|e| fail(lua, e))?;
    let setup = run.vm_host.qemu().map_err(|e| fail(lua, e))?;
    let mut config = VmConfig::new(handle.name(), profile, run.run_dir.path());
    config.qemu = setup.qemu;
    config.use_kvm = setup.accel == Accel::Kvm;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.files = options.files;
    config.disks = options.disks;
    let started = Instant::now();
    match Vm::start(ctx.pool_slot(), StartFrom::Boot(Box::new(config))) {
        Ok(vm) => {
            let console = ctx.register_console(vm.console_log().to_path_buf());
            ctx.log(&format!(
                "VM {} booted (profile {}, {} MiB, {} CPU, {:?} channel) in {:.1}s; its console is console {console}\n",
                handle.name(),
                handle.profile(),
                options.memory_mib,
                options.cpus,
                vm.channel(),
                started.elapsed().as_secs_f64(),
            ));
            handle.set_running(vm);
            Ok(MultiValue::new())
        }
        Err(error) => {
            // Registered even though the boot failed: the report shows its tail.
            if let StartError::Boot(boot) = &error {
                if let Some(console) = boot.console_log() {
                    ctx.register_console(console.to_path_buf());
                }
            }
            ctx.log(&format!("VM {}: boot failed: {error}\n", handle.name()));
            Err(fail(lua, error))
        }
    }
}

fn exec_table(lua: &Lua, output: ExecOutput) -> mlua::Result<Table> {
    let result = lua.create_table()?;
    result.set("ok", output.ok())?;
    result.set("exit_code", output.exit_code)?;
    result.set("stdout", output_string(lua, output.stdout)?)?;
    result.set("stderr", output_string(lua, output.stderr)?)?;
    Ok(result)
}

fn exec(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd = args::text("exec", arg(a, 0), "argument 1 (command)").map_err(|e| fail(lua, e))?;
    let output = this
        .with_client("exec", |c| c.exec(&cmd))
        .map_err(|e| fail(lua, e))?;
    Ok(returns([Value::Table(exec_table(lua, output)?)]))
}

fn json(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd = args::text("json", arg(a, 0), "argument 1 (command)").map_err(|e| fail(lua, e))?;
    let output = this
        .with_client("json", |c| c.exec(&cmd))
        .map_err(|e| fail(lua, e))?;
    if !output.ok() {
        return Err(fail(
            lua,
            VmApiError::CommandFailed {
                exit_code: output.exit_code,
                cmd,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            },
        ));
    }
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|source| {
        fail(
            lua,
            VmApiError::Json {
                subject: this.to_string(),
                cmd,
                source,
            },
        )
    })?;
    Ok(returns([json_to_lua(lua, &document)?]))
}

fn write_file(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let path =
        args::text("write_file", arg(a, 0), "argument 1 (guest path)").map_err(|e| fail(lua, e))?;
    let data =
        args::bytes("write_file", arg(a, 1), "argument 2 (data)").map_err(|e| fail(lua, e))?;
    this.with_client("write_file", |c| c.write_file(&path, &data))
        .map_err(|e| fail(lua, e))?;
    Ok(MultiValue::new())
}

fn read_file(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let path =
        args::text("read_file", arg(a, 0), "argument 1 (guest path)").map_err(|e| fail(lua, e))?;
    let data = this
        .with_client("read_file", |c| c.read_file(&path))
        .map_err(|e| fail(lua, e))?;
    Ok(returns([lua_bytes(lua, &data)?]))
}

fn dmesg(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let pattern = match arg(a, 0) {
        Value::Nil => None,
        value => {
            Some(args::text("dmesg", value, "argument 1 (pattern)").map_err(|e| fail(lua, e))?)
        }
    };
    let text = this
        .with_client("dmesg", |c| c.dmesg(pattern.as_deref()))
        .map_err(|e| fail(lua, e))?;
    Ok(returns([lua_bytes(lua, text.as_bytes())?]))
}

fn mount_vfs(lua: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    this.with_client("mount_vfs", AgentClient::mount_vfs)
        .map_err(|e| fail(lua, e))?;
    Ok(MultiValue::new())
}

fn shutdown(lua: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    this.vm_only("shutdown").map_err(|e| fail(lua, e))?;
    if let Some(note) = this.handle.stop(Stop::Shutdown) {
        FileContext::of(lua)?.log(&format!("VM {}: {note}\n", this.handle.name()));
    }
    Ok(MultiValue::new())
}

/// `vm:kill()` kills QEMU; `worker:kill()` ends the worker. Both are no-ops when
/// there is nothing left to kill.
fn kill(lua: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    match &this.worker {
        None => {
            if let Some(note) = this.handle.stop(Stop::Kill) {
                FileContext::of(lua)?.log(&format!("VM {}: {note}\n", this.handle.name()));
            }
        }
        Some(worker) => {
            if worker.killed.replace(true) || !this.handle.is_running() {
                return Ok(MultiValue::new());
            }
            let main = this
                .handle
                .client("worker_kill")
                .map_err(|e| fail(lua, e))?;
            this.handle
                .observe(main.worker_kill(worker.worker.channel))
                .map_err(|e| fail(lua, e))?;
        }
    }
    Ok(MultiValue::new())
}

/// `vm:wait_until`, from `wait_until.lua`, given a monotonic clock, a sleep and the
/// options check.
fn wait_until(lua: &Lua) -> mlua::Result<Function> {
    let origin = Instant::now();
    let now = lua.create_function(move |_, ()| Ok(origin.elapsed().as_secs_f64()))?;
    let sleep = lua.create_function(|_, seconds: f64| {
        std::thread::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)));
        Ok(())
    })?;
    let check = lua.create_function(|_, opts: Value| wait_options(&opts))?;
    lua.load(WAIT_UNTIL)
        .set_name("=provium wait_until")
        .call((now, sleep, check))
}

/// `wait_until`'s options: timeout (10 s), interval (0.5 s), desc ("condition").
/// Returns an error message (raised by the Lua side at the caller's line) or the
/// values; the timeout as given, so the message shows it as the test wrote it.
fn wait_options(opts: &Value) -> mlua::Result<(Option<String>, Value, f64, String)> {
    let checked = (|| -> Result<(Value, f64, String), String> {
        let opts = options::read(opts, "argument 2 (options)", WAIT_UNTIL_OPTIONS)
            .map_err(|e| e.to_string())?;
        let get = |key: &str| options::get(&opts, key).map_err(|e| e.to_string());
        let seconds = |key: &str, default: Value, positive: bool| -> Result<Value, String> {
            let value = get(key)?;
            let secs = match value {
                Value::Nil => return Ok(default),
                Value::Integer(i) => i as f64,
                Value::Number(n) => n,
                _ => f64::NAN,
            };
            if secs.is_finite() && secs >= 0.0 && !(positive && secs == 0.0) {
                Ok(value)
            } else {
                let wanted = if positive {
                    "a positive"
                } else {
                    "a non-negative"
                };
                Err(format!(
                    "{key} must be {wanted} number of seconds, not {}",
                    args::shown(&value)
                ))
            }
        };
        let desc = match get("desc")? {
            Value::Nil => "condition".to_string(),
            Value::String(s) => s.to_string_lossy(),
            other => other.to_string().unwrap_or_default(),
        };
        let interval = match seconds("interval", Value::Number(0.5), true)? {
            Value::Integer(i) => i as f64,
            Value::Number(n) => n,
            _ => 0.5,
        };
        Ok((
            seconds("timeout", Value::Integer(10), false)?,
            interval,
            desc,
        ))
    })();
    Ok(match checked {
        Ok((timeout, interval, desc)) => (None, timeout, interval, desc),
        Err(message) => (
            Some(format!("wait_until: {message}")),
            Value::Nil,
            0.0,
            String::new(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::TestFile;
    use crate::pool::{Pool, PoolMode};
    use crate::report::Outcome;
    use crate::runs::{RunContext, RunDir};
    use crate::shim::InjectedFile;
    use crate::vm::BootError;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn eval(lua: &Lua, code: &str) -> Value {
        lua.load(format!("return {code}")).eval().unwrap()
    }

    #[test]
    fn boot_options_parse_with_defaults_and_project_relative_paths() {
        let lua = Lua::new();
        let root = Path::new("/project");
        assert_eq!(
            boot_options("a.lua#1", &Value::Nil, root).unwrap(),
            BootOptions::default()
        );
        let opts = eval(
            &lua,
            r#"{ memory = "2G", cpus = 2,
                files = { ["/etc/b"] = "rel/b", ["/etc/a"] = "/abs/a" },
                disks = { { "d.img", format = "qcow2", readonly = true }, { path = "/e.img" } } }"#,
        );
        let parsed = boot_options("a.lua#1", &opts, root).unwrap();
        assert_eq!((parsed.memory_mib, parsed.cpus), (2048, 2));
        assert_eq!(
            parsed.files,
            vec![
                InjectedFile {
                    guest_path: "/etc/a".into(),
                    host_path: "/abs/a".into()
                },
                InjectedFile {
                    guest_path: "/etc/b".into(),
                    host_path: "/project/rel/b".into()
                },
            ]
        );
        assert_eq!(
            parsed.disks,
            vec![
                Disk {
                    path: "/project/d.img".into(),
                    format: DiskFormat::Qcow2,
                    readonly: true
                },
                Disk {
                    path: "/e.img".into(),
                    format: DiskFormat::Raw,
                    readonly: false
                },
            ]
        );
        let memory_as_mib = eval(&lua, "{ memory = 384 }");
        assert_eq!(
            boot_options("v", &memory_as_mib, root).unwrap().memory_mib,
            384
        );
    }

    #[test]
    fn bad_boot_options_name_the_vm_and_the_option() {
        let lua = Lua::new();
        let cases = [
            (
                "{ memroy = '1G' }",
                "VM v: boot: unknown option 'memroy' (known options: memory, cpus, files, disks)",
            ),
            ("{ memory = '1T' }", "invalid size '1T'"),
            ("{ memory = '0' }", "zero is not a size"),
            ("{ cpus = 0 }", "cpus must be at least 1"),
            (
                "{ files = { ['etc/x'] = 'x' } }",
                "guest path 'etc/x' must be absolute",
            ),
            (
                "{ disks = { { 'd.img', format = 'vmdk' } } }",
                "disks[1].format is 'vmdk'",
            ),
            (
                "{ disks = { { readonly = true } } }",
                "disks[1] has no path",
            ),
            ("{ disks = 'd.img' }", "disks must be a table, not a string"),
            (
                "'big'",
                "argument 1 (options) must be a table, not a string",
            ),
        ];
        for (code, expected) in cases {
            let error = boot_options("v", &eval(&lua, code), Path::new("/p"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{code}: {error}");
        }
    }

    #[test]
    fn boot_errors_carry_only_the_last_console_lines() {
        let tail: String = (1..=8).map(|n| format!("line {n}\n")).collect();
        assert_eq!(
            console_suffix(Some(&tail)),
            "\nlast console lines:\nline 4\nline 5\nline 6\nline 7\nline 8"
        );
        assert_eq!(console_suffix(Some("  \n")), "");
        assert_eq!(console_suffix(None), "");
        let failed = VmApiError::CommandFailed {
            exit_code: 4,
            cmd: "cat /x".into(),
            stderr: "cat: /x: No such file\n".into(),
        };
        assert_eq!(
            failed.to_string(),
            "command failed (exit 4): cat /x\ncat: /x: No such file"
        );
        let boot = VmApiError::Start(StartError::Boot(Box::new(BootError::Timeout {
            vm: "a.lua#1".into(),
            timeout: Duration::from_secs(30),
            console_log: "/r/vm1/console.log".into(),
            console_tail: String::new(),
        })));
        assert!(boot.is_infrastructure());
        assert!(!failed.is_infrastructure());
    }

    /// Runs `script` as a test file with the VM API installed; no VM is booted.
    fn run_script(script: &str) -> crate::report::FileReport {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.lua");
        std::fs::write(&path, script).unwrap();
        let run = Arc::new(RunContext::new(
            RunDir::create(&dir.path().join("runs")).unwrap(),
            dir.path().to_path_buf(),
            crate::config::Config::empty(dir.path()),
            Pool::new(PoolMode::Auto),
            Default::default(),
        ));
        let file = TestFile {
            name: "vm.lua".into(),
            path: PathBuf::from(&path),
        };
        super::super::file::run_file_with(run, &file, 0, &[super::super::pack::install, install])
    }

    #[test]
    fn handles_without_a_boot_explain_themselves() {
        let report = run_script(
            r#"
            local vm = provium.create()
            assert_eq("vm.lua#1", vm.name)
            assert_eq("default", vm.profile)
            assert_eq(false, vm.running)
            assert_eq(nil, vm.pid)
            assert_eq("VM vm.lua#1", tostring(vm))
            local ok, err = pcall(vm.exec, vm, "true")
            assert_contains(err, "VM vm.lua#1: exec: the VM is not booted (call vm:boot() first)")
            ok, err = pcall(vm.spawn, vm)
            assert_contains(err, "VM vm.lua#1: spawn: the VM is not booted")
            ok, err = pcall(vm.spawn, vm, { thred = true })
            assert_contains(err, "VM vm.lua#1: spawn: unknown option 'thred' (known options: thread)")
            ok, err = pcall(provium.create, "nosuch")
            assert_contains(err, "unknown profile 'nosuch'; known profiles: default")
            ok, err = pcall(provium.create, 5)
            assert_contains(err, "create: argument 1 (profile name) must be a string")
            ok, err = pcall(vm.exec, "true")
            assert_contains(err, "exec: call it as a method, vm:exec(...) with a colon")
            ok, err = pcall(vm.boot, vm, { memroy = "1G" })
            assert_contains(err, "unknown option 'memroy'")
            ok, err = pcall(vm.syscall_buf, vm, 1, 3, "x", 1, 0, 1)
            assert_contains(err, "buffer index 3 is outside the argument list")
            -- Stopping what never ran is a no-op.
            vm:kill()
            vm:shutdown()
            provium.shutdown_all()
            assert_eq("VM vm.lua#2", tostring(provium.create()))

            local calls = 0
            assert_eq(3, vm:wait_until(function()
              calls = calls + 1
              return calls >= 3 and calls
            end, { interval = 0.001 }))
            ok, err = pcall(vm.wait_until, vm, function() return false end,
              { timeout = 0.05, interval = 0.01, desc = "never" })
            assert_contains(err, "wait_until: never not met within 0.05s")
            ok, err = pcall(vm.wait_until, vm, function() error("inner") end)
            assert_contains(err, "vm.lua:")
            assert_contains(err, ": inner")
            ok, err = pcall(vm.wait_until, vm, 5)
            assert_contains(err, "wait_until: argument 1 must be a function")
            ok, err = pcall(vm.wait_until, vm, function() end, { interval = 0 })
            assert_contains(err, "interval must be a positive number of seconds")
            ok, err = pcall(vm.wait_until, vm, function() end, { timout = 1 })
            assert_contains(err, "wait_until: unknown option 'timout' (known options: timeout, interval, desc)")
            ok, err = pcall(vm.wait_until, vm, function() end, { timeout = "5" })
            assert_contains(err, 'wait_until: timeout must be a non-negative number of seconds, not the string "5"')
            "#,
        );
        assert_eq!(report.outcome, Outcome::Passed, "{report:?}");
        assert_eq!(report.console_tail, None);
    }
}
