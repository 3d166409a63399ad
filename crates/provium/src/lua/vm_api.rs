//! The Lua VM API (SPEC §3): `provium.create`, `provium.shutdown_all`, and the
//! methods of VM handles and of their workers.
//!
//! A binding only converts: Lua arguments into Rust values (`vm_args`, `options`),
//! one call into the VM layer (the file's [`Fleet`](crate::vm::fleet::Fleet) for life
//! cycle, an [`AgentClient`] for everything a guest does), and the answer back into
//! Lua values (`vm_values`). One userdata type serves VMs and workers: a [`LuaVm`] is
//! a shared [`VmHandle`] plus, for a worker, the worker's own client. The kernel-facing
//! methods (syscalls, ioctls, jobs, workers) are in `vm_kernel`.

use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, Lua, MultiValue, Table, UserDataFields, UserDataMethods, UserDataRef,
    Value,
};

use super::boot_options::boot_options;
use super::framework::lua_duration;
use super::options::{self};
use super::vm_args::{self as args};
use super::vm_handle::{arg, fail, lua_bytes, returns, LuaVm, Method, VmApiError};
use super::vm_kernel;
use super::vm_nics;
use super::vm_values::{self, json_to_lua, output_string};
use super::{plain_errors, raise, FileContext};
use crate::report::{Event, VmBooted};
use crate::vm::accel::Accel;
use crate::vm::client::{AgentClient, ExecOutput};
use crate::vm::fleet::Stop;
use crate::vm::gdb;
use crate::vm::host::{self, ProfileError};
use crate::vm::{StartError, StartFrom, Vm, VmConfig};

const WAIT_UNTIL: &str = include_str!("wait_until.lua");
const WAIT_UNTIL_OPTIONS: &[&str] = &["timeout", "interval", "desc"];
const EXEC_OPTIONS: &[&str] = &["timeout"];

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
    provium.set(
        "kernel_release",
        plain_errors(lua, lua.create_function(kernel_release)?)?,
    )?;
    Ok(())
}

const METHODS: &[(&str, Method)] = &[
    ("boot", boot),
    ("exec", exec),
    ("json", json),
    ("write_file", write_file),
    ("read_file", read_file),
    ("dmesg", dmesg),
    ("mount_vfs", mount_vfs),
    ("shell", super::vm_shell::shell),
    ("shutdown", shutdown),
    ("ip", |lua, this, a| vm_nics::nic_field(lua, this, a, "ip")),
    ("mac", |lua, this, a| {
        vm_nics::nic_field(lua, this, a, "mac")
    }),
    ("ifname", |lua, this, a| {
        vm_nics::nic_field(lua, this, a, "ifname")
    }),
    ("kill", kill),
];

/// Every method name of a VM handle (workers lack `boot`, `shutdown` and `spawn`).
pub fn method_names() -> Vec<&'static str> {
    METHODS
        .iter()
        .chain(vm_kernel::METHODS)
        .map(|(name, _)| *name)
        .chain(["wait_until"])
        .collect()
}

/// The read-only fields of a handle (`pid` and `channel` are a worker's).
pub const FIELDS: [&str; 6] = ["name", "profile", "running", "pid", "channel", "gdb"];

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
        "gdb" => match this.handle.gdb_address() {
            Some(address) => Value::String(lua.create_string(address)?),
            None => Value::Nil,
        },
        _ => Value::Nil,
    })
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

/// `provium.kernel_release(profile?)`: the release (`uname -r`) of a profile's kernel,
/// read from its image on the host — what an out-of-tree module must be built
/// against. A profile with a `build` is built first, as its first boot would.
fn kernel_release(lua: &Lua, profile: Value) -> mlua::Result<String> {
    let ctx = FileContext::of(lua)?;
    let name = match &profile {
        Value::Nil => host::DEFAULT_PROFILE.to_string(),
        other => args::text("kernel_release", other, "argument 1 (profile name)")
            .map_err(|e| fail(lua, e))?,
    };
    let run = ctx.run();
    let profile = run
        .vm_host
        .boot_profile(&run.config, &name, run.run_dir.path())
        .map_err(|e| fail(lua, e))?;
    crate::vm::kernel::kernel_version(&profile.kernel).map_err(|source| {
        let profile = name.clone();
        fail(lua, VmApiError::Kernel { profile, source })
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

fn boot(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    this.vm_only("boot").map_err(|e| fail(lua, e))?;
    let ctx = FileContext::of(lua)?;
    let handle = &this.handle;
    handle.check_bootable().map_err(|e| fail(lua, e))?;
    let run = ctx.run();
    let options =
        boot_options(handle.name(), arg(a, 0), &run.project_root).map_err(|e| fail(lua, e))?;
    let networks = match arg(a, 0) {
        Value::Table(t) => t.raw_get::<Value>("networks")?,
        _ => Value::Nil,
    };
    let (nics, joined) = super::network::nics_for_boot(lua, handle.name(), &networks)?;
    let profile = run
        .vm_host
        .boot_profile(&run.config, handle.profile(), run.run_dir.path())
        .map_err(|e| {
            if let ProfileError::Build(build) = &e {
                // A profile whose kernel does not build cannot be tested: no file
                // starts after this one (those running finish).
                run.request_stop(format!("the build of profile '{}' failed", build.profile));
            }
            fail(lua, e)
        })?;
    let setup = run.vm_host.qemu().map_err(|e| fail(lua, e))?;
    let mut config = VmConfig::new(handle.name(), profile, run.run_dir.path());
    config.qemu = setup.qemu;
    config.use_kvm = setup.accel == Accel::Kvm;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.files = options.files;
    config.disks = options.disks;
    config.nics = nics;
    config.boot_timeout = options.boot_timeout;
    if !options.append.is_empty() {
        config.profile.append = format!("{} {}", config.profile.append, options.append)
            .trim()
            .to_string();
    }
    if options.gdb || gdb::wanted_by_environment() {
        config.gdb_port = Some(gdb::free_port().map_err(|e| {
            raise(
                lua,
                format!("VM {}: boot: no free port for gdb: {e}", handle.name()),
                true,
            )
        })?);
    }
    let kernel = config.profile.kernel.clone();
    let started = Instant::now();
    match Vm::start(ctx.pool_slot(), StartFrom::Boot(Box::new(config))) {
        Ok(vm) => {
            run.events.send(Event::VmBooted(VmBooted {
                file: ctx.name().to_string(),
                vm: handle.name().to_string(),
                profile: handle.profile().to_string(),
                memory_mib: options.memory_mib,
                cpus: options.cpus,
                boot: started.elapsed(),
                accel: setup.accel.name().to_string(),
                fixture: None,
            }));
            if let Some(address) = vm.gdb_address() {
                let vmlinux = gdb::vmlinux_for(&kernel);
                run.events.send(Event::Notice(format!(
                    "provium: VM {}: gdb stub at {address}; attach with: {}",
                    handle.name(),
                    gdb::attach_command(vmlinux.as_deref(), &address)
                )));
            }
            let console = ctx.register_console(vm.console_log().to_path_buf());
            ctx.log(&format!(
                "VM {} booted (profile {}, {} MiB, {} CPU, {:?} channel, machine {}: {}) in {:.1}s; its console is console {console}\n",
                handle.name(),
                handle.profile(),
                options.memory_mib,
                options.cpus,
                vm.channel(),
                vm.machine().machine.name(),
                vm.machine().reason,
                started.elapsed().as_secs_f64(),
            ));
            handle.set_running(vm);
            if !joined.is_empty() {
                let nics = vm_nics::guest_nics(handle, &joined).map_err(|e| {
                    // A VM whose NICs did not come up is no use to the test.
                    handle.stop(Stop::Kill);
                    raise(lua, e, true)
                })?;
                for nic in &nics {
                    ctx.log(&format!(
                        "VM {}: {} on network {} is {} ({})\n",
                        handle.name(),
                        nic.ifname,
                        nic.network,
                        nic.address,
                        nic.mac
                    ));
                }
                handle.set_nics(nics);
            }
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
    const OP: &str = "exec";
    let cmd = args::text(OP, arg(a, 0), "argument 1 (command)").map_err(|e| fail(lua, e))?;
    let option_error = |source| VmApiError::Options {
        subject: this.to_string(),
        op: OP,
        source,
    };
    let opts = options::read(arg(a, 1), "argument 2 (options)", EXEC_OPTIONS)
        .map_err(|e| fail(lua, option_error(e)))?;
    let limit = match options::get(&opts, "timeout").map_err(|e| fail(lua, option_error(e)))? {
        Value::Nil => None,
        value => {
            let limit = lua_duration(&value)
                .map_err(|reason| raise(lua, format!("{this}: exec: timeout: {reason}"), false))?;
            (!limit.is_zero()).then_some(limit)
        }
    };
    let output = this
        .with_client(OP, |c| match limit {
            Some(limit) => c.exec_within(&cmd, limit),
            None => c.exec(&cmd),
        })
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
        crate::cancel::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)))
            .map_err(|stop| mlua::Error::RuntimeError(stop.to_string()))
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
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Runs `script` as a test file with the VM API installed; no VM is booted.
    fn run_script(script: &str) -> crate::report::FileReport {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.lua");
        std::fs::write(&path, script).unwrap();
        let run = Arc::new(RunContext::new(
            RunDir::create(&dir.path().join("runs")).unwrap(),
            crate::config::Config::empty(dir.path()),
            Pool::new(PoolMode::Auto),
            Default::default(),
            Default::default(),
        ));
        let file = TestFile::new("vm.lua", PathBuf::from(&path), dir.path());
        let spec = super::super::file::LuaFile {
            file: &file,
            index: 0,
            attempt: 1,
            cancel: crate::cancel::Cancel::for_file(None),
            source: None,
        };
        super::super::file::run_file_with(run, spec, &[super::super::pack::install, install])
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
