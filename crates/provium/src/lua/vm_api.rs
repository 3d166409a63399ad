//! The Lua VM API (SPEC §3): `provium.create`, `provium.shutdown_all`, and the
//! methods of VM handles and of their workers.
//!
//! One userdata type serves both: a [`LuaVm`] is a shared [`VmHandle`] plus, for a
//! worker, the agent channel it was given, so every method exists once and sends
//! its request on the handle's channel. Each file keeps its handles in a
//! [`FileVms`], which `shutdown_all` walks and whose file-end hook kills whatever is
//! still running: nothing outlives the file.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, Lua, MultiValue, Table, UserDataFields, UserDataMethods, UserDataRef,
    Value,
};
use provium_proto::{Request, Response, MAIN_CHANNEL, MAX_DATA};
use thiserror::Error;

use super::vm_args::{self as args, ArgError};
use super::vm_values::{self, json_to_lua, output_string};
use super::{plain_errors, FileContext};
use crate::schedule::pool::{parse_size_mib, PoolError};
use crate::shim::InjectedFile;
use crate::vm::accel::{Accel, AccelError};
use crate::vm::host::{self, ProfileError};
use crate::vm::link::LinkError;
use crate::vm::qemu::DiskFormat;
use crate::vm::{BootError, Disk, ShutdownOutcome, Vm, VmConfig, VmError};

const WAIT_UNTIL: &str = include_str!("wait_until.lua");

/// Extra time a `job_wait` call gets beyond the wait it asks the agent for.
const JOB_WAIT_SLACK: Duration = Duration::from_secs(30);

/// Boot options and their defaults (SPEC §3).
const BOOT_OPTIONS: [&str; 4] = ["memory", "cpus", "files", "disks"];
const DEFAULT_MEMORY_MIB: u64 = 512;
const DEFAULT_CPUS: u32 = 1;

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
    Pool(#[from] PoolError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Reading an option table failed (e.g. a raising `__index`).
    #[error(transparent)]
    Lua(#[from] mlua::Error),
    #[error("{error}{}", console_suffix(.error.console_tail()))]
    Boot { error: Box<BootError> },
    #[error("VM {vm}: boot: {reason}")]
    BootOption { vm: String, reason: String },
    #[error("VM {vm} is already running; shut it down before booting it again")]
    AlreadyRunning { vm: String },
    #[error("VM {vm}: {op}: the VM is not booted (call vm:boot() first)")]
    NotBooted { vm: String, op: &'static str },
    #[error("VM {vm}: {op}: the VM {how}")]
    Ended {
        vm: String,
        op: &'static str,
        how: String,
    },
    #[error("{worker}: {op} is not available on a worker (a worker lives and ends with its VM; end it with worker:kill())")]
    NotOnWorker { worker: String, op: &'static str },
    #[error("{worker}: {op}: the worker was killed (worker:kill())")]
    WorkerKilled { worker: String, op: &'static str },
    #[error(
        "{subject}: write_file {path}: {size} bytes exceed the 16 MiB ({MAX_DATA}-byte) limit"
    )]
    TooLarge {
        subject: String,
        path: String,
        size: usize,
    },
    #[error("{subject}: dmesg: invalid pattern {pattern:?}: {source}")]
    Pattern {
        subject: String,
        pattern: String,
        source: regex::Error,
    },
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
    #[error("{subject}: {op}: unexpected agent answer {got}")]
    Unexpected {
        subject: String,
        op: &'static str,
        got: String,
    },
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

/// Turns a method failure into the Lua error `plain_errors` locates at the caller.
fn fail(error: impl Into<VmApiError>) -> mlua::Error {
    mlua::Error::RuntimeError(error.into().to_string())
}

/// How a VM stopped running.
#[derive(Debug, Clone)]
enum Ending {
    ShutDown,
    Killed,
    /// The guest stopped answering (QEMU exited, kernel panic, agent died).
    Died(String),
    /// Taken out by [`take_last_running`] (a fixture script's VM, to snapshot).
    HandedOver,
}

impl Ending {
    fn describe(&self) -> String {
        match self {
            Ending::ShutDown => "was shut down (vm:shutdown())".to_string(),
            Ending::Killed => "was killed (vm:kill(), or its file ended)".to_string(),
            Ending::Died(reason) => format!("died earlier: {reason}"),
            Ending::HandedOver => "was handed over to be snapshotted".to_string(),
        }
    }
}

/// Why `error` means the VM can no longer answer at all, if it does. A deadline
/// passing is not such a sign: the command may just be slow.
fn death_reason(error: &VmError) -> Option<String> {
    match error {
        VmError::Died { reason, .. } => Some(reason.clone()),
        VmError::Link(LinkError::VmDead { reason, .. })
        | VmError::Link(LinkError::Disconnected { reason, .. }) => Some(reason.clone()),
        _ => None,
    }
}

enum VmState {
    Created,
    Running(Box<Vm>),
    Ended(Ending),
}

/// One VM created by `provium.create`, shared by its Lua handle and its workers.
struct VmHandle {
    /// `<file>#<n>`: unique within the run, shown in every error.
    name: String,
    profile: String,
    state: RefCell<VmState>,
}

impl VmHandle {
    fn is_running(&self) -> bool {
        matches!(*self.state.borrow(), VmState::Running(_))
    }

    /// Sends `request` on `channel` of the running VM.
    fn call(
        &self,
        channel: u32,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, VmApiError> {
        let op = request.op_name();
        let state = self.state.borrow();
        let vm = match &*state {
            VmState::Running(vm) => vm,
            VmState::Created => {
                return Err(VmApiError::NotBooted {
                    vm: self.name.clone(),
                    op,
                })
            }
            VmState::Ended(how) => {
                return Err(VmApiError::Ended {
                    vm: self.name.clone(),
                    op,
                    how: how.describe(),
                })
            }
        };
        let timeout = timeout.unwrap_or_else(|| vm.op_timeout());
        let result = vm.call_channel(channel, request, timeout);
        drop(state);
        result.map_err(|error| {
            // A dead guest is ended now, so its resources return to the pool before
            // the file goes on (perhaps to boot another VM).
            if let Some(reason) = death_reason(&error) {
                if let Some(vm) = self.take_running(Ending::Died(reason)) {
                    stop_vm(vm, Stop::Kill);
                }
            }
            error.into()
        })
    }

    /// Takes the VM out of the handle, leaving `ending`; `None` when it was not running.
    fn take_running(&self, ending: Ending) -> Option<Box<Vm>> {
        let mut state = self.state.borrow_mut();
        if !matches!(*state, VmState::Running(_)) {
            return None;
        }
        match std::mem::replace(&mut *state, VmState::Ended(ending)) {
            VmState::Running(vm) => Some(vm),
            _ => None,
        }
    }
}

/// The VMs one test file created, in creation order.
#[derive(Default)]
struct FileVms {
    handles: RefCell<Vec<Rc<VmHandle>>>,
    cleanup_registered: Cell<bool>,
}

impl FileVms {
    fn running(&self) -> Vec<Rc<VmHandle>> {
        self.handles
            .borrow()
            .iter()
            .filter(|h| h.is_running())
            .cloned()
            .collect()
    }

    /// The file-end hook: ends every VM still running.
    fn kill_running(&self, ctx: Option<&FileContext>) {
        for handle in self.running() {
            let Some(vm) = handle.take_running(Ending::Killed) else {
                continue;
            };
            let note = stop_vm(vm, Stop::Kill);
            if let Some(ctx) = ctx {
                ctx.log(&format!(
                    "VM {} was still running when the file ended: {note}\n",
                    handle.name
                ));
            }
        }
    }
}

/// The running file's VM registry, registering its file-end hook on first use.
fn file_vms(lua: &Lua, ctx: &Rc<FileContext>) -> mlua::Result<Rc<FileVms>> {
    let vms = match lua.app_data_ref::<Rc<FileVms>>() {
        Some(vms) => Rc::clone(&vms),
        None => {
            return Err(mlua::Error::RuntimeError(
                "provium: the VM API is not installed in this Lua state".to_string(),
            ))
        }
    };
    if !vms.cleanup_registered.replace(true) {
        let hook_vms = Rc::clone(&vms);
        // Weak: the context owns the hook, which must not keep the context alive.
        let hook_ctx: Weak<FileContext> = Rc::downgrade(ctx);
        ctx.on_file_end(move || hook_vms.kill_running(hook_ctx.upgrade().as_deref()));
    }
    Ok(vms)
}

/// A worker: a forked agent process (or a clone(CLONE_THREAD) thread) with its own
/// channel.
struct Worker {
    channel: u32,
    pid: i32,
    thread: bool,
    killed: Cell<bool>,
}

/// What a syscall-shaped request (`syscall*`, `ioctl_buf`) answered: the raw result,
/// the argument buffers after the call in argument order, the output sub-buffers.
struct SyscallOutcome {
    ret: i64,
    bufs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
}

/// The Lua userdata behind VM handles and workers.
pub struct LuaVm {
    handle: Rc<VmHandle>,
    worker: Option<Worker>,
}

impl std::fmt::Display for LuaVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.worker {
            None => write!(f, "VM {}", self.handle.name),
            Some(w) => write!(
                f,
                "worker {} ({} {}) of VM {}",
                w.channel,
                if w.thread { "thread" } else { "pid" },
                w.pid,
                self.handle.name
            ),
        }
    }
}

impl LuaVm {
    fn channel(&self) -> u32 {
        self.worker.as_ref().map_or(MAIN_CHANNEL, |w| w.channel)
    }

    fn call(&self, request: &Request) -> Result<Response, VmApiError> {
        self.call_with_timeout(request, None)
    }

    fn call_with_timeout(
        &self,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, VmApiError> {
        if let Some(worker) = &self.worker {
            if worker.killed.get() {
                return Err(VmApiError::WorkerKilled {
                    worker: self.to_string(),
                    op: request.op_name(),
                });
            }
        }
        self.handle.call(self.channel(), request, timeout)
    }

    /// Refuses VM-only operations on a worker.
    fn vm_only(&self, op: &'static str) -> Result<(), VmApiError> {
        match &self.worker {
            Some(_) => Err(VmApiError::NotOnWorker {
                worker: self.to_string(),
                op,
            }),
            None => Ok(()),
        }
    }

    fn unexpected(&self, op: &'static str, got: Response) -> VmApiError {
        VmApiError::Unexpected {
            subject: self.to_string(),
            op,
            got: format!("{got:?}").chars().take(200).collect(),
        }
    }

    fn exec(&self, cmd: &str) -> Result<(i32, Vec<u8>, Vec<u8>), VmApiError> {
        match self.call(&Request::Exec {
            cmd: cmd.to_string(),
        })? {
            Response::Exec {
                exit_code,
                stdout,
                stderr,
            } => Ok((exit_code, stdout, stderr)),
            other => Err(self.unexpected("exec", other)),
        }
    }

    /// A syscall-shaped request; returns the result, the buffers and the outputs.
    fn syscall(&self, request: Request) -> Result<SyscallOutcome, VmApiError> {
        let op = request.op_name();
        match self.call(&request)? {
            Response::Syscall { ret, bufs, outputs } => Ok(SyscallOutcome { ret, bufs, outputs }),
            other => Err(self.unexpected(op, other)),
        }
    }

    fn job_status(
        &self,
        lua: &Lua,
        request: &Request,
        timeout: Option<Duration>,
    ) -> mlua::Result<Table> {
        let op = request.op_name();
        match self.call_with_timeout(request, timeout).map_err(fail)? {
            Response::JobStatus {
                running,
                exit_code,
                stdout,
                stderr,
            } => {
                let status = lua.create_table()?;
                status.set("exit_code", exit_code)?;
                status.set("stdout", output_string(lua, stdout)?)?;
                status.set("stderr", output_string(lua, stderr)?)?;
                status.set("running", running)?;
                Ok(status)
            }
            other => Err(fail(self.unexpected(op, other))),
        }
    }
}

/// Installs `provium.create`, `provium.shutdown_all` and the VM handle type.
pub fn install(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    vm_values::register(lua)?;
    lua.set_app_data(Rc::new(FileVms::default()));
    let methods = lua.create_table()?;
    for &(name, method) in METHODS {
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

type Method = fn(&Lua, &LuaVm, &[Value]) -> mlua::Result<MultiValue>;

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
        "name" => Value::String(lua.create_string(&this.handle.name)?),
        "profile" => Value::String(lua.create_string(&this.handle.profile)?),
        "running" => {
            Value::Boolean(this.handle.is_running() && !worker.is_some_and(|w| w.killed.get()))
        }
        "pid" => worker.map_or(Value::Nil, |w| Value::Integer(w.pid.into())),
        "channel" => worker.map_or(Value::Nil, |w| Value::Integer(w.channel.into())),
        _ => Value::Nil,
    })
}

fn arg(values: &[Value], index: usize) -> &Value {
    values.get(index).unwrap_or(&Value::Nil)
}

fn returns(values: impl IntoIterator<Item = Value>) -> MultiValue {
    values.into_iter().collect()
}

fn lua_bytes(lua: &Lua, bytes: &[u8]) -> mlua::Result<Value> {
    lua.create_string(bytes).map(Value::String)
}

/// Gives a booted `vm` (e.g. one resumed from a fixture snapshot) a handle in the
/// running file: its console is registered for the report and the log, and the file
/// ends it like any VM it created. `profile` is what `vm.profile` reads.
pub fn adopt(lua: &Lua, vm: Vm, profile: &str) -> mlua::Result<AnyUserData> {
    let ctx = FileContext::of(lua)?;
    let vms = file_vms(lua, &ctx)?;
    ctx.register_console(vm.console_log().to_path_buf());
    let handle = Rc::new(VmHandle {
        name: vm.name().to_string(),
        profile: profile.to_string(),
        state: RefCell::new(VmState::Running(Box::new(vm))),
    });
    vms.handles.borrow_mut().push(Rc::clone(&handle));
    lua.create_any_userdata(LuaVm {
        handle,
        worker: None,
    })
}

/// The most recently created VM of the running file, taken out of its handle if it
/// is still running (a fixture script's VM, to snapshot); its handle then raises
/// "was handed over" on use.
pub fn take_last_running(lua: &Lua) -> Option<Vm> {
    let vms = Rc::clone(&*lua.app_data_ref::<Rc<FileVms>>()?);
    let last = vms.handles.borrow().last().cloned()?;
    last.take_running(Ending::HandedOver).map(|vm| *vm)
}

fn create(lua: &Lua, profile: Value) -> mlua::Result<AnyUserData> {
    let ctx = FileContext::of(lua)?;
    let profile = match &profile {
        Value::Nil => host::DEFAULT_PROFILE.to_string(),
        other => args::text("create", other, "argument 1 (profile name)").map_err(fail)?,
    };
    host::check_profile_name(&ctx.run().config, &profile)
        .map_err(|e| fail(ProfileError::from(e)))?;
    let vms = file_vms(lua, &ctx)?;
    let number = vms.handles.borrow().len() + 1;
    let handle = Rc::new(VmHandle {
        name: format!("{}#{number}", ctx.name()),
        profile,
        state: RefCell::new(VmState::Created),
    });
    vms.handles.borrow_mut().push(Rc::clone(&handle));
    lua.create_any_userdata(LuaVm {
        handle,
        worker: None,
    })
}

/// Shuts down every running VM of the file, in parallel (each may wait for its guest).
fn shutdown_all(lua: &Lua, (): ()) -> mlua::Result<()> {
    let ctx = FileContext::of(lua)?;
    let vms = file_vms(lua, &ctx)?;
    let stopping: Vec<(String, Box<Vm>)> = vms
        .running()
        .iter()
        .filter_map(|h| {
            h.take_running(Ending::ShutDown)
                .map(|vm| (h.name.clone(), vm))
        })
        .collect();
    let notes: Vec<(String, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = stopping
            .into_iter()
            .map(|(name, vm)| scope.spawn(move || (name, stop_vm(vm, Stop::Shutdown))))
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    });
    for (name, note) in notes {
        ctx.log(&format!("VM {name}: {note}\n"));
    }
    Ok(())
}

/// How a VM is asked to end.
#[derive(Clone, Copy)]
enum Stop {
    Shutdown,
    Kill,
}

/// Ends `vm` and says how it went. A guest whose kernel panicked is left a moment to
/// finish (it powers off by itself: panic=-1 with -no-reboot), and its console gets
/// a closing line naming the panic: the kernel's trace outruns the console tail the
/// report shows, and the panic line is the point.
fn stop_vm(mut vm: Box<Vm>, stop: Stop) -> String {
    let panic = vm.panic_line();
    let note = match (stop, &panic) {
        (Stop::Kill, None) => {
            vm.kill();
            "killed".to_string()
        }
        (_, Some(_)) | (Stop::Shutdown, None) => match vm.shutdown() {
            ShutdownOutcome::PoweredOff if panic.is_some() => {
                "its kernel panicked; QEMU exited".to_string()
            }
            ShutdownOutcome::PoweredOff => "powered off".to_string(),
            ShutdownOutcome::Killed => format!(
                "did not power off within {}s; killed",
                crate::vm::SHUTDOWN_GRACE.as_secs()
            ),
            ShutdownOutcome::AlreadyStopped => "already stopped".to_string(),
        },
    };
    if let Some(panic) = panic {
        // QEMU has been reaped, so its console reader is done with the file.
        let appended = fs::OpenOptions::new()
            .append(true)
            .open(vm.console_log())
            .and_then(|mut log| {
                writeln!(
                    log,
                    "provium: VM {}: the kernel panicked: {panic}",
                    vm.name()
                )
            });
        if let Err(e) = appended {
            return format!("{note} (cannot note the panic in its console log: {e})");
        }
    }
    note
}

/// `vm:boot(opts)` after parsing.
#[derive(Debug, PartialEq, Eq)]
struct BootOptions {
    memory_mib: u64,
    cpus: u32,
    files: Vec<InjectedFile>,
    disks: Vec<Disk>,
}

fn boot_options(vm: &str, opts: Option<&Table>, root: &Path) -> Result<BootOptions, VmApiError> {
    let mut options = BootOptions {
        memory_mib: DEFAULT_MEMORY_MIB,
        cpus: DEFAULT_CPUS,
        files: Vec::new(),
        disks: Vec::new(),
    };
    let Some(opts) = opts else {
        return Ok(options);
    };
    let bad = |reason: String| VmApiError::BootOption {
        vm: vm.to_string(),
        reason,
    };
    for pair in opts.clone().pairs::<Value, Value>() {
        let (key, value) = pair.map_err(|e| bad(e.to_string()))?;
        let key = match &key {
            Value::String(k) => k.to_string_lossy(),
            other => {
                return Err(bad(format!(
                    "option keys are names, not {}",
                    args::describe(other)
                )))
            }
        };
        match key.as_str() {
            "memory" => {
                options.memory_mib = match &value {
                    Value::String(s) => parse_size_mib(&s.to_string_lossy())
                        .map_err(|e| bad(format!("memory: {e}")))?,
                    other => args::count("boot", other, "memory (MiB)")?,
                };
                if options.memory_mib == 0 {
                    return Err(bad("memory must be more than 0".to_string()));
                }
            }
            "cpus" => {
                let cpus = args::count("boot", &value, "cpus")?;
                options.cpus = u32::try_from(cpus)
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or_else(|| bad(format!("cpus must be at least 1, not {cpus}")))?;
            }
            "files" => {
                let files = args::table("boot", &value, "files")?;
                for pair in files.pairs::<Value, Value>() {
                    let (guest, host) = pair.map_err(|e| bad(e.to_string()))?;
                    let guest_path = args::text("boot", &guest, "a files key (guest path)")?;
                    if !guest_path.starts_with('/') {
                        return Err(bad(format!(
                            "files: guest path '{guest_path}' must be absolute"
                        )));
                    }
                    let host_path = args::text("boot", &host, &format!("files['{guest_path}']"))?;
                    options.files.push(InjectedFile {
                        guest_path,
                        host_path: root.join(host_path),
                    });
                }
                options
                    .files
                    .sort_by(|a, b| a.guest_path.cmp(&b.guest_path));
            }
            "disks" => {
                let disks = args::table("boot", &value, "disks")?;
                for i in 1..=disks.raw_len() {
                    let what = format!("disks[{i}]");
                    let disk = args::table("boot", &disks.raw_get(i)?, &what)?;
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
                        value => {
                            match args::text("boot", &value, &format!("{what}.format"))?.as_str() {
                                "raw" => DiskFormat::Raw,
                                "qcow2" => DiskFormat::Qcow2,
                                other => {
                                    return Err(bad(format!(
                                        "{what}.format is '{other}'; use \"raw\" or \"qcow2\""
                                    )))
                                }
                            }
                        }
                    };
                    let readonly = args::flag(
                        "boot",
                        &disk.get::<Value>("readonly")?,
                        &format!("{what}.readonly"),
                    )?;
                    options.disks.push(Disk {
                        path: root.join(path),
                        format,
                        readonly,
                    });
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown option '{other}' (known options: {})",
                    BOOT_OPTIONS.join(", ")
                )))
            }
        }
    }
    Ok(options)
}

fn boot(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    this.vm_only("boot").map_err(fail)?;
    let ctx = FileContext::of(lua)?;
    let handle = &this.handle;
    if handle.is_running() {
        return Err(fail(VmApiError::AlreadyRunning {
            vm: handle.name.clone(),
        }));
    }
    let run = ctx.run();
    let opts = args::opt_table("boot", arg(a, 0), "argument 1 (options)").map_err(fail)?;
    let options = boot_options(&handle.name, opts.as_ref(), &run.project_root).map_err(fail)?;
    let profile = run
        .vm_host
        .boot_profile(&run.config, &handle.profile)
        .map_err(fail)?;
    let setup = run.vm_host.qemu().map_err(fail)?;
    let lease = ctx
        .pool_slot()
        .acquire(
            options.memory_mib,
            options.cpus,
            &format!("VM {}", handle.name),
        )
        .map_err(fail)?;
    // The VM holds one reference until it stops; ours marks the boot done.
    let lease = Arc::new(lease);
    let mut config = VmConfig::new(&handle.name, profile, run.run_dir.path());
    config.qemu = setup.qemu;
    config.use_kvm = setup.accel == Accel::Kvm;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.files = options.files;
    config.disks = options.disks;
    let started = Instant::now();
    match Vm::boot(config, Some(Box::new(Arc::clone(&lease)))) {
        Ok(vm) => {
            lease.booted();
            let console = ctx.register_console(vm.console_log().to_path_buf());
            ctx.log(&format!(
                "VM {} booted (profile {}, {} MiB, {} CPU, {:?} channel) in {:.1}s; its console is console {console}\n",
                handle.name,
                handle.profile,
                options.memory_mib,
                options.cpus,
                vm.channel(),
                started.elapsed().as_secs_f64(),
            ));
            *handle.state.borrow_mut() = VmState::Running(Box::new(vm));
            Ok(MultiValue::new())
        }
        Err(error) => {
            // Registered even though the boot failed: the report shows its tail.
            if let Some(console) = error.console_log() {
                ctx.register_console(console.to_path_buf());
            }
            ctx.log(&format!("VM {}: boot failed: {error}\n", handle.name));
            Err(fail(VmApiError::Boot {
                error: Box::new(error),
            }))
        }
    }
}

fn exec_table(
    lua: &Lua,
    (exit_code, stdout, stderr): (i32, Vec<u8>, Vec<u8>),
) -> mlua::Result<Table> {
    let result = lua.create_table()?;
    result.set("ok", exit_code == 0)?;
    result.set("exit_code", exit_code)?;
    result.set("stdout", output_string(lua, stdout)?)?;
    result.set("stderr", output_string(lua, stderr)?)?;
    Ok(result)
}

fn exec(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd = args::text("exec", arg(a, 0), "argument 1 (command)").map_err(fail)?;
    let output = this.exec(&cmd).map_err(fail)?;
    Ok(returns([Value::Table(exec_table(lua, output)?)]))
}

fn json(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd = args::text("json", arg(a, 0), "argument 1 (command)").map_err(fail)?;
    let (exit_code, stdout, stderr) = this.exec(&cmd).map_err(fail)?;
    if exit_code != 0 {
        return Err(fail(VmApiError::CommandFailed {
            exit_code,
            cmd,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }));
    }
    let document: serde_json::Value = serde_json::from_slice(&stdout).map_err(|source| {
        fail(VmApiError::Json {
            subject: this.to_string(),
            cmd,
            source,
        })
    })?;
    Ok(returns([json_to_lua(lua, &document)?]))
}

fn write_file(_: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let path = args::text("write_file", arg(a, 0), "argument 1 (guest path)").map_err(fail)?;
    let data = args::bytes("write_file", arg(a, 1), "argument 2 (data)").map_err(fail)?;
    if data.len() > MAX_DATA as usize {
        return Err(fail(VmApiError::TooLarge {
            subject: this.to_string(),
            path,
            size: data.len(),
        }));
    }
    match this
        .call(&Request::WriteFile {
            path,
            data,
            mode: None,
        })
        .map_err(fail)?
    {
        Response::Done => Ok(MultiValue::new()),
        other => Err(fail(this.unexpected("write_file", other))),
    }
}

fn read_file(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let path = args::text("read_file", arg(a, 0), "argument 1 (guest path)").map_err(fail)?;
    match this.call(&Request::ReadFile { path }).map_err(fail)? {
        Response::File { data } => Ok(returns([lua_bytes(lua, &data)?])),
        other => Err(fail(this.unexpected("read_file", other))),
    }
}

fn dmesg(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let filter = match arg(a, 0) {
        Value::Nil => None,
        value => {
            let pattern = args::text("dmesg", value, "argument 1 (pattern)").map_err(fail)?;
            let regex = regex::Regex::new(&pattern).map_err(|source| {
                fail(VmApiError::Pattern {
                    subject: this.to_string(),
                    pattern,
                    source,
                })
            })?;
            Some(regex)
        }
    };
    let log = match this.call(&Request::Dmesg).map_err(fail)? {
        Response::Dmesg { log } => String::from_utf8_lossy(&log).into_owned(),
        other => return Err(fail(this.unexpected("dmesg", other))),
    };
    let text = match filter {
        None => log,
        Some(regex) => log
            .lines()
            .filter(|line| regex.is_match(line))
            .map(|line| format!("{line}\n"))
            .collect(),
    };
    Ok(returns([lua_bytes(lua, text.as_bytes())?]))
}

fn mount_vfs(_: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    match this.call(&Request::MountVfs).map_err(fail)? {
        Response::Done => Ok(MultiValue::new()),
        other => Err(fail(this.unexpected("mount_vfs", other))),
    }
}

fn shutdown(lua: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    this.vm_only("shutdown").map_err(fail)?;
    if let Some(vm) = this.handle.take_running(Ending::ShutDown) {
        let note = stop_vm(vm, Stop::Shutdown);
        FileContext::of(lua)?.log(&format!("VM {}: {note}\n", this.handle.name));
    }
    Ok(MultiValue::new())
}

/// `vm:kill()` kills QEMU; `worker:kill()` ends the worker. Both are no-ops when
/// there is nothing left to kill.
fn kill(lua: &Lua, this: &LuaVm, _: &[Value]) -> mlua::Result<MultiValue> {
    match &this.worker {
        None => {
            if let Some(vm) = this.handle.take_running(Ending::Killed) {
                let note = stop_vm(vm, Stop::Kill);
                FileContext::of(lua)?.log(&format!("VM {}: {note}\n", this.handle.name));
            }
        }
        Some(worker) => {
            if worker.killed.replace(true) || !this.handle.is_running() {
                return Ok(MultiValue::new());
            }
            let request = Request::WorkerKill {
                channel: worker.channel,
            };
            match this
                .handle
                .call(MAIN_CHANNEL, &request, None)
                .map_err(fail)?
            {
                Response::Done => {}
                other => return Err(fail(this.unexpected("worker_kill", other))),
            }
        }
    }
    Ok(MultiValue::new())
}

fn syscall_number(op: &'static str, a: &[Value]) -> Result<i64, ArgError> {
    args::integer(op, arg(a, 0), "argument 1 (syscall number)")
}

fn syscall(_: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "syscall";
    let nr = syscall_number(OP, a).map_err(fail)?;
    let argv = args::syscall_args(OP, a.get(1..).unwrap_or(&[]), &[]).map_err(fail)?;
    let ret = this
        .syscall(Request::Syscall {
            nr,
            args: argv,
            bufs: Vec::new(),
            ptrs: Vec::new(),
        })
        .map_err(fail)?
        .ret;
    Ok(returns([Value::Integer(ret)]))
}

fn syscall_buf(_: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "syscall_buf";
    let nr = syscall_number(OP, a).map_err(fail)?;
    let rest = a.get(3..).unwrap_or(&[]);
    args::check_arg_count(OP, rest.len()).map_err(fail)?;
    let arg_idx =
        args::buffer_index(OP, arg(a, 1), "argument 2 (buffer index)", rest.len()).map_err(fail)?;
    let data = args::bytes(OP, arg(a, 2), "argument 3 (data)").map_err(fail)?;
    let argv = args::syscall_args(OP, rest, &[arg_idx]).map_err(fail)?;
    let ret = this
        .syscall(Request::Syscall {
            nr,
            args: argv,
            bufs: vec![provium_proto::SyscallBuf { arg_idx, data }],
            ptrs: Vec::new(),
        })
        .map_err(fail)?
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
    let nr = syscall_number(op, a).map_err(fail)?;
    let first_arg = if with_ptrs { 3 } else { 2 };
    let rest = a.get(first_arg..).unwrap_or(&[]);
    args::check_arg_count(op, rest.len()).map_err(fail)?;
    let table = args::table(op, arg(a, 1), "argument 2 (buffers)").map_err(fail)?;
    let bufs = args::buffers(op, &table, rest.len()).map_err(fail)?;
    let ptrs = if with_ptrs {
        let ptr_table = args::table(op, arg(a, 2), "argument 3 (pointers)").map_err(fail)?;
        args::ptr_patches(op, &ptr_table, &bufs).map_err(fail)?
    } else {
        Vec::new()
    };
    let indices: Vec<u32> = bufs.iter().map(|b| b.arg_idx).collect();
    let argv = args::syscall_args(op, rest, &indices).map_err(fail)?;
    let result = this
        .syscall(Request::Syscall {
            nr,
            args: argv,
            bufs,
            ptrs,
        })
        .map_err(fail)?;
    syscall_results(lua, result)
}

fn ioctl_target(op: &'static str, a: &[Value]) -> Result<(i32, u64), ArgError> {
    let fd = args::int32(op, arg(a, 0), "argument 1 (fd)")?;
    // Two's complement keeps command numbers with the top bit set exact.
    let cmd = args::integer(op, arg(a, 1), "argument 2 (ioctl command)")? as u64;
    Ok((fd, cmd))
}

fn ioctl(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "ioctl";
    let (fd, cmd) = ioctl_target(OP, a).map_err(fail)?;
    let data = match arg(a, 2) {
        Value::Nil => None,
        value => Some(args::bytes(OP, value, "argument 3 (data)").map_err(fail)?),
    };
    match this.call(&Request::Ioctl { fd, cmd, data }).map_err(fail)? {
        Response::Ioctl { ret, data } => {
            let data = match data {
                Some(bytes) => lua_bytes(lua, &bytes)?,
                None => Value::Nil,
            };
            Ok(returns([Value::Integer(ret), data]))
        }
        other => Err(fail(this.unexpected(OP, other))),
    }
}

fn ioctl_buf(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "ioctl_buf";
    let (fd, cmd) = ioctl_target(OP, a).map_err(fail)?;
    let arg_struct = args::bytes(OP, arg(a, 2), "argument 3 (struct)").map_err(fail)?;
    let specs = match arg(a, 3) {
        Value::Nil => Vec::new(),
        value => {
            let table = args::table(OP, value, "argument 4 (pointer specs)").map_err(fail)?;
            args::ioctl_ptrs(OP, &table).map_err(fail)?
        }
    };
    let result = this
        .syscall(Request::IoctlBuf {
            fd,
            cmd,
            arg: arg_struct,
            ptrs: specs,
        })
        .map_err(fail)?;
    syscall_results(lua, result)
}

fn background(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let cmd = args::text("background", arg(a, 0), "argument 1 (command)").map_err(fail)?;
    match this.call(&Request::Background { cmd }).map_err(fail)? {
        Response::Job { id, pid } => {
            let job = lua.create_table()?;
            // Ids are opaque 64-bit values: kept bit-exact.
            job.set("id", id as i64)?;
            job.set("pid", pid)?;
            Ok(returns([Value::Table(job)]))
        }
        other => Err(fail(this.unexpected("background", other))),
    }
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

fn job_wait(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "job_wait";
    let id = job_id(OP, arg(a, 0)).map_err(fail)?;
    let wait = match arg(a, 1) {
        Value::Nil => 0.0,
        value => args::seconds(OP, value, "argument 2 (timeout)").map_err(fail)?,
    };
    let wait = Duration::from_secs_f64(wait);
    let request = Request::JobWait {
        id,
        timeout_ms: wait.as_millis().try_into().unwrap_or(u64::MAX),
    };
    let status = this.job_status(lua, &request, Some(wait + JOB_WAIT_SLACK))?;
    Ok(returns([Value::Table(status)]))
}

fn job_kill(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    let id = job_id("job_kill", arg(a, 0)).map_err(fail)?;
    let status = this.job_status(lua, &Request::JobKill { id }, None)?;
    Ok(returns([Value::Table(status)]))
}

fn spawn(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    const OP: &str = "spawn";
    this.vm_only(OP).map_err(fail)?;
    let thread = match args::opt_table(OP, arg(a, 0), "argument 1 (options)").map_err(fail)? {
        Some(opts) => args::flag(OP, &opts.get::<Value>("thread")?, "thread").map_err(fail)?,
        None => false,
    };
    match this.call(&Request::Spawn { thread }).map_err(fail)? {
        Response::Spawned { channel, pid } => {
            let worker = lua.create_any_userdata(LuaVm {
                handle: Rc::clone(&this.handle),
                worker: Some(Worker {
                    channel,
                    pid,
                    thread,
                    killed: Cell::new(false),
                }),
            })?;
            Ok(returns([Value::UserData(worker)]))
        }
        other => Err(fail(this.unexpected(OP, other))),
    }
}

/// `vm:wait_until`, from `wait_until.lua`, given a monotonic clock and a sleep.
fn wait_until(lua: &Lua) -> mlua::Result<Function> {
    let origin = Instant::now();
    let now = lua.create_function(move |_, ()| Ok(origin.elapsed().as_secs_f64()))?;
    let sleep = lua.create_function(|_, seconds: f64| {
        std::thread::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)));
        Ok(())
    })?;
    lua.load(WAIT_UNTIL)
        .set_name("=provium wait_until")
        .call((now, sleep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::TestFile;
    use crate::report::FileStatus;
    use crate::runs::{RunContext, RunDir};
    use crate::schedule::pool::{Pool, PoolMode};
    use std::path::PathBuf;

    #[test]
    fn boot_options_parse_with_defaults_and_project_relative_paths() {
        let lua = Lua::new();
        let root = Path::new("/project");
        assert_eq!(
            boot_options("a.lua#1", None, root).unwrap(),
            BootOptions {
                memory_mib: 512,
                cpus: 1,
                files: Vec::new(),
                disks: Vec::new(),
            }
        );
        let opts: Table = lua
            .load(
                r#"return { memory = "2G", cpus = 2,
                    files = { ["/etc/b"] = "rel/b", ["/etc/a"] = "/abs/a" },
                    disks = { { "d.img", format = "qcow2", readonly = true }, { path = "/e.img" } } }"#,
            )
            .eval()
            .unwrap();
        let parsed = boot_options("a.lua#1", Some(&opts), root).unwrap();
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
        let memory_as_mib: Table = lua.load("return { memory = 384 }").eval().unwrap();
        assert_eq!(
            boot_options("v", Some(&memory_as_mib), root)
                .unwrap()
                .memory_mib,
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
        ];
        for (code, expected) in cases {
            let opts: Table = lua.load(format!("return {code}")).eval().unwrap();
            let error = boot_options("v", Some(&opts), Path::new("/p"))
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
    }

    #[test]
    fn boot_errors_carry_the_console_tail() {
        let error = VmApiError::Boot {
            error: Box::new(BootError::Timeout {
                vm: "a.lua#1".into(),
                timeout: Duration::from_secs(30),
                console_log: "/r/vm1/console.log".into(),
                console_tail: "[ 0.1] Linux version\n[ 0.2] stuck\n".into(),
            }),
        };
        assert_eq!(
            error.to_string(),
            "VM a.lua#1: the agent did not answer within 30s (boot timeout)\n\
             last console lines:\n[ 0.1] Linux version\n[ 0.2] stuck"
        );
        let failed = VmApiError::CommandFailed {
            exit_code: 4,
            cmd: "cat /x".into(),
            stderr: "cat: /x: No such file\n".into(),
        };
        assert_eq!(
            failed.to_string(),
            "command failed (exit 4): cat /x\ncat: /x: No such file"
        );
    }

    /// Runs `script` as a test file with the VM API installed; no VM is booted.
    fn run_script(script: &str) -> crate::report::FileReport {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.lua");
        fs::write(&path, script).unwrap();
        let run = Arc::new(RunContext {
            run_dir: RunDir::create(&dir.path().join("runs")).unwrap(),
            test_root: dir.path().to_path_buf(),
            config: crate::config::Config::empty(dir.path()),
            project_root: dir.path().to_path_buf(),
            pool: Pool::new(PoolMode::Auto),
            vm_host: Default::default(),
        });
        let file = TestFile {
            name: "vm.lua".into(),
            path: PathBuf::from(&path),
        };
        super::super::run_file_with(run, &file, 0, &[super::super::pack::install, install])
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
            "#,
        );
        assert_eq!(report.status, FileStatus::Passed, "{report:?}");
        assert_eq!(report.console_tail, None);
    }
}
