//! `provium.fixture(name)`: a VM prepared once per run by a fixture script,
//! snapshotted, and resumed fresh for every request (SPEC §5; lifecycle in
//! docs/fixtures.md).
//!
//! The run's fixture registry (`crate::fixtures`) decides who builds and who waits;
//! this binding builds through the same file life cycle as a test file (`file`), then
//! snapshots the script's last VM, and resumes a VM per request through
//! [`Vm::start`], as `vm:boot` does.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mlua::{AnyUserData, Lua, Table, Value};

use super::file::{run_lua_file, Execution, LuaFile};
use super::{plain_errors, raise, vm_api, vm_args, FileContext, PROVIUM_MODULES};
use crate::cancel::{self, Cancel};
use crate::discover::TestFile;
use crate::fixtures::{locate, BuildResult, FixtureError, BUILD_WAIT_TIMEOUT};
use crate::report::{Event, VmBooted};
use crate::runs::RunContext;
use crate::vm::{StartError, StartFrom, Vm};

/// Fixture build contexts get indices far above any test file's dispatch position.
static NEXT_FIXTURE_INDEX: AtomicUsize = AtomicUsize::new(1 << 30);
/// Numbers resumed VMs (`<file>@<fixture>#<n>`), unique within the process.
static NEXT_RESUMED: AtomicUsize = AtomicUsize::new(1);

/// Installs `provium.fixture`.
pub fn install(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    provium.set("fixture", plain_errors(lua, lua.create_function(fixture)?)?)
}

/// Whether a fixture failure means the infrastructure broke for the requesting file
/// (the build or the resume failed), rather than the request being wrong.
fn is_infrastructure(error: &FixtureError) -> bool {
    !matches!(
        error,
        FixtureError::BadName { .. } | FixtureError::NotFound { .. } | FixtureError::Stopped { .. }
    )
}

/// `provium.fixture(name)`: a VM resumed from the fixture's snapshot, built first
/// if this is the run's first request for it.
fn fixture(lua: &Lua, name: Value) -> mlua::Result<AnyUserData> {
    let name = vm_args::text("provium.fixture", &name, "argument 1 (fixture name)")
        .map_err(|e| raise(lua, e.to_string(), false))?;
    let ctx = FileContext::of(lua)?;
    let run = Arc::clone(ctx.run());
    // The file's path may be relative to the current directory; the root is canonical.
    let file_path = fs::canonicalize(ctx.path()).unwrap_or_else(|_| ctx.path().to_path_buf());
    let root = ctx.root_dir().to_path_buf();
    let start_dir = file_path.parent().unwrap_or(&root);
    let fixture_error = |error: FixtureError| {
        let broke = is_infrastructure(&error);
        raise(lua, error.to_string(), broke)
    };
    let script = locate(&name, start_dir, &root).map_err(fixture_error)?;
    let script = fs::canonicalize(&script).unwrap_or(script);
    let requested = Instant::now();
    let snapshot = run.fixtures.get(
        &name,
        &script,
        run.run_dir.path(),
        BUILD_WAIT_TIMEOUT,
        |path| build(&run, &root, &name, &script, path),
    );
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(error) => {
            if let FixtureError::Failed { consoles, log, .. } = &error {
                for console in consoles {
                    ctx.register_console(console.clone());
                }
                if let Some(log) = log {
                    ctx.log(&format!("fixture '{name}': build log {}\n", log.display()));
                }
            }
            return Err(fixture_error(error));
        }
    };
    let waited = requested.elapsed();
    let vm_name = format!(
        "{}@{name}#{}",
        ctx.name(),
        NEXT_RESUMED.fetch_add(1, Ordering::Relaxed)
    );
    let resuming = Instant::now();
    let from = StartFrom::Resume {
        snapshot: &snapshot,
        run_dir: run.run_dir.path(),
        name: &vm_name,
    };
    let vm = match Vm::start(ctx.pool_slot(), from) {
        Ok(vm) => vm,
        Err(error) => {
            // Registered even though the resume failed: the report shows its tail.
            if let StartError::Boot(boot) = &error {
                if let Some(console) = boot.console_log() {
                    ctx.register_console(console.to_path_buf());
                }
            }
            return Err(raise(lua, format!("fixture '{name}': {error}"), true));
        }
    };
    run.events.send(Event::VmBooted(VmBooted {
        file: ctx.name().to_string(),
        vm: vm_name.clone(),
        profile: snapshot.profile().name.clone(),
        memory_mib: snapshot.memory_mib(),
        cpus: snapshot.cpus(),
        boot: resuming.elapsed(),
        accel: run
            .vm_host
            .qemu()
            .map_or_else(|_| "unknown".to_string(), |s| s.accel.name().to_string()),
        fixture: Some(name.clone()),
    }));
    ctx.log(&format!(
        "VM {vm_name} resumed from fixture '{name}' in {:.3}s after {:.3}s getting \
         the snapshot ({}, {} bytes, taken in {:.3}s); its console is console {}\n",
        resuming.elapsed().as_secs_f64(),
        waited.as_secs_f64(),
        snapshot.path().display(),
        snapshot.size(),
        snapshot.took().as_secs_f64(),
        ctx.consoles().len() + 1,
    ));
    vm_api::adopt(lua, vm, &snapshot.profile().name)
}

/// Runs the fixture script through the file life cycle (on this thread) and
/// snapshots the last VM it created to `path`; its other VMs end with the file.
fn build(
    run: &Arc<RunContext>,
    root: &Path,
    name: &str,
    script: &Path,
    path: &Path,
) -> BuildResult {
    // Relative, so its log lands in the run directory like a test file's.
    let shown = match script.strip_prefix(root) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => format!("fixtures/{name}.lua"),
    };
    let file = TestFile::new(&shown, script.to_path_buf(), root);
    let header = format!(
        "provium log for fixture '{name}'\nfile: {}\nrun:  {}\n\n",
        script.display(),
        run.run_dir.path().display()
    );
    // The build is the requesting file's work: it stops when that file must, and its
    // own sub-tests have their own limits.
    let spec = LuaFile {
        file: &file,
        index: NEXT_FIXTURE_INDEX.fetch_add(1, Ordering::Relaxed),
        attempt: 1,
        cancel: cancel::current()
            .map(|requester| Cancel::child(&requester))
            .unwrap_or_default(),
        source: None,
    };
    let finished = run_lua_file(run, spec, &header, PROVIUM_MODULES, |_, ctx, ran| {
        script_error(ran)?;
        // A snapshot carries its NICs' MACs and addresses: copies resumed onto one
        // network would clash, and the switch belongs to the building file.
        if let Some(on) = ctx
            .fleet()
            .last_running()
            .and_then(|h| h.nics().first().cloned())
        {
            return Err(format!(
                "its VM is on network {} ({}); a fixture's VM cannot be on a network \
                 (snapshots of networked VMs are not supported): create the network and \
                 boot the VMs on it in the test file",
                on.network, on.ifname
            ));
        }
        let mut vm = ctx.fleet().take_last_running().ok_or(
            "the last VM the script created is not running (or it created none); a fixture \
             must end with its VM booted",
        )?;
        let snapshot = vm.snapshot(path).map_err(|e| e.to_string())?;
        ctx.log(&format!(
            "snapshot of VM {} written to {} ({} bytes in {:.2}s)\n",
            snapshot.source_vm(),
            path.display(),
            snapshot.size(),
            snapshot.took().as_secs_f64()
        ));
        Ok(snapshot)
    });
    let mut tail = format!(
        "\nfixture {} in {:.3}s\n",
        if finished.result.is_ok() {
            "built"
        } else {
            "FAILED"
        },
        finished.duration.as_secs_f64()
    );
    if let Err(message) = &finished.result {
        tail.push_str(&format!("error: {message}\n"));
    }
    let failed = finished.result.is_err();
    let log = finished.close_log(tail, failed, failed);
    let consoles = finished.consoles;
    if let Err(stop) = cancel::checkpoint() {
        return Err(FixtureError::Stopped {
            name: name.to_string(),
            reason: stop.to_string(),
        });
    }
    match finished.result {
        Ok(snapshot) => Ok(snapshot),
        Err(message) => Err(FixtureError::Failed {
            name: name.to_string(),
            message,
            log: log.ok().flatten(),
            consoles,
        }),
    }
}

/// Any failure of the script (a raise, a failed sub-test, `todo`, `os.exit`) is the
/// fixture's error, with its location.
fn script_error(ran: &Execution) -> Result<(), String> {
    if let Some(error) = &ran.error {
        // The logged form keeps the `file:line:` the report strips; drop the traceback.
        let message = error.logged.split("\nstack traceback:").next();
        return Err(message.unwrap_or(&error.shown).to_string());
    }
    for subtest in &ran.record.subtests {
        if subtest.outcome.is_failure() {
            let message = subtest.message.as_deref().unwrap_or_default();
            return Err(format!("sub-test '{}' failed: {message}", subtest.name));
        }
    }
    if ran.record.file_todo.is_some() {
        return Err("the fixture script called todo()".to_string());
    }
    Ok(())
}
