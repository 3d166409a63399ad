//! The one life cycle of a Lua file, shared by test files and fixture builds: a log,
//! a fresh Lua 5.4 state with the framework and the `provium` table, the script, a
//! last look at the live state (a fixture snapshots its VM there), the file's end
//! (hooks, then every VM it left running killed), and its consoles collected.
//!
//! [`run_file`] turns that into a test file's [`FileReport`].

use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, Table, VmState};

use super::framework::{Framework, Record};
use super::{
    clean_traceback, error_message, install_modules, root_cause, strip_location, FileContext,
    ModuleInstaller, CONSOLE_TAIL_LINES, PROVIUM_MODULES,
};
use crate::cancel::{self, Cancel, Stop};
use crate::discover::TestFile;
use crate::report::{FileReport, Outcome};
use crate::runs::{FileLog, RunContext};

/// A failure of the script outside any `test()` block.
pub(crate) struct FileError {
    /// As shown under the file in the report.
    pub shown: String,
    /// As logged: the full message and the traceback.
    pub logged: String,
    /// `Failed`, or `Error` when the message carries an infrastructure failure.
    pub outcome: Outcome,
}

/// What running the script produced.
pub(crate) struct Execution {
    pub record: Record,
    pub error: Option<FileError>,
    /// Why the script was stopped before its end (its time ran out, the run was
    /// interrupted), when it was.
    pub stopped: Option<Stop>,
}

/// How often (in Lua instructions) a running script checks whether it must stop: a
/// spinning loop is interrupted within microseconds of its deadline.
const CHECK_EVERY: u32 = 10_000;

/// A finished Lua file, its state gone and its VMs ended.
pub(crate) struct Finished<T> {
    pub execution: Execution,
    /// What the last look at the live state returned.
    pub result: T,
    pub consoles: Vec<PathBuf>,
    pub duration: Duration,
    ctx: Rc<FileContext>,
    log_path: PathBuf,
    log_error: Option<String>,
}

impl<T> Finished<T> {
    /// Appends `tail` and every console (with QEMU's stderr) to the log, then keeps it
    /// (returning its path) or deletes it. The VMs' own directories go then (the log
    /// holds what a person reads of them), unless `keep_vms` (a failed fixture build
    /// hands its consoles on to the file that asked for it). Without a log (it could
    /// not be created) says why.
    pub fn close_log(
        &self,
        mut tail: String,
        keep: bool,
        keep_vms: bool,
    ) -> Result<Option<PathBuf>, String> {
        append_consoles(&mut tail, &self.consoles);
        self.ctx.log(&tail);
        if !keep_vms {
            for console in &self.consoles {
                remove_vm_dir(self.ctx.run.run_dir.path(), console);
            }
        }
        let log = self.ctx.log.borrow_mut().take();
        match (log, &self.log_error) {
            (Some(log), _) if !keep => {
                log.delete(self.ctx.run.run_dir.path());
                Ok(None)
            }
            (Some(_), _) => Ok(Some(self.log_path.clone())),
            (None, Some(error)) => Err(error.clone()),
            (None, None) => Ok(None),
        }
    }
}

/// One Lua file to run: which file, its place in the run, which attempt, and when it
/// must stop.
pub(crate) struct LuaFile<'a> {
    pub file: &'a TestFile,
    pub index: usize,
    pub attempt: u32,
    pub cancel: Cancel,
    /// The script itself, when it is not read from `file.path` (`provium shell`
    /// generates one).
    pub source: Option<&'a str>,
}

/// Runs `file` through the whole life cycle on the calling thread, with its `cancel`
/// entered as the thread's current one. `header` opens its log; `last_look` sees the
/// live state after the script, before the file's end.
pub(crate) fn run_lua_file<T>(
    run: &Arc<RunContext>,
    file: LuaFile<'_>,
    header: &str,
    modules: &[ModuleInstaller],
    last_look: impl FnOnce(&Lua, &FileContext, &Execution) -> T,
) -> Finished<T> {
    let started = Instant::now();
    let LuaFile {
        file,
        index,
        attempt,
        cancel,
        source,
    } = file;
    let _entered = cancel::enter(&cancel);
    let log_path = run.run_dir.attempt_log_path(&file.name, attempt);
    let (log, log_error) = match FileLog::create(log_path.clone()) {
        Ok(log) => (Some(log), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let ctx = Rc::new(FileContext::new(
        Arc::clone(run),
        file,
        (index, attempt),
        cancel.clone(),
        log,
    ));
    ctx.log(header);

    // SAFETY: test files are the user's own code and SPEC §3 gives them the full
    // standard library, including `debug` and C modules, which only the unsafe
    // constructor allows. Nothing else shares this state.
    let lua = unsafe { Lua::unsafe_new() };
    lua.set_app_data(Rc::clone(&ctx));
    interrupt_when_stopped(&lua, cancel.clone());
    let mut execution = execute(&lua, file, source, modules).unwrap_or_else(|e| Execution {
        record: Record::default(),
        error: Some(FileError {
            shown: format!("internal error: {}", root_cause(&e)),
            logged: format!("internal error: {e}"),
            outcome: Outcome::Error,
        }),
        stopped: None,
    });
    execution.stopped = match execution.record.stopped.clone() {
        Some(stop) => Some(stop),
        None if execution.error.is_some() => cancel.check().err(),
        None => None,
    };
    let result = last_look(&lua, &ctx, &execution);
    ctx.end();
    lua.remove_app_data::<Rc<FileContext>>();
    drop(lua);
    Finished {
        execution,
        result,
        consoles: ctx.consoles(),
        duration: started.elapsed(),
        ctx,
        log_path,
        log_error,
    }
}

/// Raises in the running script, every [`CHECK_EVERY`] instructions, once the file
/// must stop; not inside the framework's own prelude, whose bookkeeping must finish
/// (the next check in the user's code raises).
fn interrupt_when_stopped(lua: &Lua, cancel: Cancel) {
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(CHECK_EVERY),
        move |_, debug| match cancel.check() {
            Ok(()) => Ok(VmState::Continue),
            Err(_)
                if debug
                    .source()
                    .source
                    .is_some_and(|s| s.contains("provium prelude")) =>
            {
                Ok(VmState::Continue)
            }
            Err(stop) => Err(mlua::Error::RuntimeError(stop.to_string())),
        },
    );
}

/// Runs attempt `attempt` of one test file to completion on the calling thread and
/// reports its outcome. Its log is written as it goes and deleted when it passes.
pub fn run_file(
    run: Arc<RunContext>,
    file: &TestFile,
    index: usize,
    attempt: u32,
    cancel: Cancel,
) -> FileReport {
    let spec = LuaFile {
        file,
        index,
        attempt,
        cancel,
        source: None,
    };
    run_file_with(run, spec, PROVIUM_MODULES)
}

pub(crate) fn run_file_with(
    run: Arc<RunContext>,
    spec: LuaFile<'_>,
    modules: &[ModuleInstaller],
) -> FileReport {
    let file = spec.file;
    let attempt = spec.attempt;
    let header = format!(
        "provium log for {}{}\nfile: {}\nrun:  {}\n\n",
        file.name,
        if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        },
        file.path.display(),
        run.run_dir.path().display()
    );
    // --shell-on-failure: a file that failed outside test() gets its shell here, with
    // its VMs still up.
    let finished = run_lua_file(&run, spec, &header, modules, |_, ctx, execution| {
        if let (Some(error), None) = (&execution.error, &execution.stopped) {
            super::vm_shell::on_failure(ctx, &format!("{} failed: {}", ctx.name(), error.shown));
        }
    });
    let Execution {
        record,
        error,
        stopped,
    } = &finished.execution;
    let stop_error = stopped.as_ref().map(|stop| FileError {
        shown: stop.to_string(),
        logged: stop.to_string(),
        outcome: stop_outcome(stop),
    });
    let error = stop_error.as_ref().or(error.as_ref());
    let outcome = file_outcome(record, error);

    let mut tail = format!(
        "\nresult: {} ({:.3}s)\n",
        match &outcome {
            Outcome::Passed => "ok".to_string(),
            Outcome::Todo { .. } => "todo".to_string(),
            failure => format!("FAIL ({})", failure.name()),
        },
        finished.duration.as_secs_f64()
    );
    if let Some(error) = finished.execution.error.as_ref() {
        tail.push_str("error outside test():\n");
        for line in error.logged.lines() {
            tail.push_str(&format!("    {line}\n"));
        }
    }
    let failed = outcome.is_failure();
    // Read before the log is closed: that removes the VMs' directories.
    let shown_tail = match (failed, finished.consoles.last()) {
        (true, Some(console)) => Some(console_tail(console)),
        _ => None,
    };
    let (log_path, log_note) = match finished.close_log(tail, failed, false) {
        Ok(path) => (path, None),
        Err(error) => (None, Some(format!("(log not written: {error})"))),
    };
    let mut file_error = error.map(|e| e.shown.clone());
    if let (true, Some(note)) = (failed, log_note) {
        file_error = Some(match file_error {
            Some(e) => format!("{e}\n{note}"),
            None => note,
        });
    }
    FileReport {
        name: file.name.clone(),
        duration: finished.duration,
        subtests: finished.execution.record.subtests.clone(),
        file_error,
        console_tail: shown_tail,
        log_path,
        outcome,
        attempt,
        retrying: false,
    }
}

/// The outcome a stopped file or sub-test ends with.
pub(crate) fn stop_outcome(stop: &Stop) -> Outcome {
    match stop {
        Stop::Interrupted { .. } => Outcome::Interrupted,
        Stop::FileTimeout { .. } | Stop::SubtestTimeout { .. } => Outcome::TimedOut,
    }
}

/// A file's outcome from its parts: `todo()` at file level wins; otherwise the worst
/// of its sub-tests and its own error, where a timeout outranks a broken VM, which
/// outranks a failed assertion (an `error` says the results may not mean anything).
fn file_outcome(record: &Record, error: Option<&FileError>) -> Outcome {
    if let Some(reason) = &record.file_todo {
        return Outcome::Todo {
            reason: reason.clone(),
        };
    }
    let failures = record
        .subtests
        .iter()
        .map(|s| &s.outcome)
        .chain(error.map(|e| &e.outcome))
        .filter(|o| o.is_failure());
    let rank = |o: &Outcome| match o {
        Outcome::Interrupted => 4,
        Outcome::TimedOut => 3,
        Outcome::Error => 2,
        _ => 1,
    };
    failures
        .max_by_key(|o| rank(o))
        .cloned()
        .unwrap_or(Outcome::Passed)
}

/// Runs the script in `lua` with the framework and `modules` installed.
pub(crate) fn execute(
    lua: &Lua,
    file: &TestFile,
    given: Option<&str>,
    modules: &[ModuleInstaller],
) -> mlua::Result<Execution> {
    let framework = Framework::install(lua)?;
    install_modules(lua, modules)?;
    extend_package_path(lua, &file.root.dir)?;

    let plain = |message: String| FileError {
        shown: message.clone(),
        logged: message,
        outcome: Outcome::Failed,
    };
    let read = match given {
        Some(text) => Ok(text.as_bytes().to_vec()),
        None => fs::read(&file.path),
    };
    let mut source = match read {
        Ok(source) => source,
        Err(e) => {
            return Ok(Execution {
                record: framework.finish(),
                error: Some(plain(format!("cannot read {}: {e}", file.path.display()))),
                stopped: None,
            })
        }
    };
    // Like luaL_loadfile: a first line starting with '#' (a shebang) is skipped,
    // keeping its newline so line numbers stay right.
    if source.first() == Some(&b'#') {
        let end = source
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(source.len());
        source.drain(..end);
    }
    let chunk = lua
        .load(&source[..])
        .set_name(format!("@{}", file.path.display()))
        .into_function();
    let chunk = match chunk {
        Ok(chunk) => chunk,
        // A syntax error keeps its location: it is the point of the message.
        Err(mlua::Error::SyntaxError { message, .. }) => {
            return Ok(Execution {
                record: framework.finish(),
                error: Some(plain(message)),
                stopped: None,
            })
        }
        Err(e) => return Err(e),
    };
    let (completed, raised, trace) = framework.run_protected(chunk)?;
    let record = framework.finish();
    let error = match record.exit_code {
        Some(0) => None,
        Some(code) => Some(plain(format!("os.exit({code}) called"))),
        None if completed || record.file_todo.is_some() => None,
        None => {
            let full = error_message(&raised);
            let mut logged = full.clone();
            if let Some(trace) = trace {
                logged.push('\n');
                logged.push_str(&clean_traceback(&trace));
            }
            let outcome = FileContext::of(lua)
                .map(|ctx| ctx.classify(&full))
                .unwrap_or(Outcome::Failed);
            Some(FileError {
                shown: strip_location(&full).to_string(),
                logged,
                outcome,
            })
        }
    };
    Ok(Execution {
        record,
        error,
        stopped: None,
    })
}

/// Appends every console in full, each under its `--- console <n> ---` heading (SPEC §4),
/// and what QEMU said on stderr, when it said anything.
fn append_consoles(text: &mut String, consoles: &[PathBuf]) {
    for (n, console) in consoles.iter().enumerate() {
        text.push_str(&format!("\n--- console {} ---\n", n + 1));
        match fs::read(console) {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) => text.push_str(&format!("(cannot read {}: {e})\n", console.display())),
        }
        let stderr = console.with_file_name(crate::vm::qemu::STDERR_FILE);
        if let Ok(bytes) = fs::read(&stderr) {
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                text.push_str(&format!("\n--- QEMU stderr {} ---\n", n + 1));
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}

/// Removes the directory of the VM whose console is `console` (`<run dir>/vmN/`),
/// and nothing else: a console elsewhere is left alone.
fn remove_vm_dir(run_dir: &Path, console: &Path) {
    let Some(dir) = console.parent() else {
        return;
    };
    let is_vm_dir = dir.parent() == Some(run_dir)
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm") && n[2..].chars().all(|c| c.is_ascii_digit()));
    if is_vm_dir {
        let _ = fs::remove_dir_all(dir);
    }
}

/// `require` also searches the test root (after Lua's default path).
fn extend_package_path(lua: &Lua, test_root: &Path) -> mlua::Result<()> {
    let package: Table = lua.globals().get("package")?;
    let path: String = package.get("path")?;
    let root = test_root.display();
    package.set("path", format!("{path};{root}/?.lua;{root}/?/init.lua"))
}

fn console_tail(console: &Path) -> Vec<String> {
    match fs::read(console) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..]
                .iter()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect()
        }
        Err(e) => vec![format!("(cannot read {}: {e})", console.display())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolMode};
    use crate::runs::RunDir;

    /// Stands in for VM bindings: `provium.console(path)` registers a console and
    /// `provium.on_end(path)` registers a hook that creates `path`.
    fn fake_vm_module(lua: &Lua, provium: &Table) -> mlua::Result<()> {
        provium.set(
            "console",
            lua.create_function(|lua, path: String| {
                Ok(FileContext::of(lua)?.register_console(PathBuf::from(path)))
            })?,
        )?;
        let break_vm = lua.create_function(|lua, message: String| -> mlua::Result<()> {
            Err(super::super::raise(lua, message, true))
        })?;
        provium.set("break_vm", super::super::plain_errors(lua, break_vm)?)?;
        provium.set(
            "on_end",
            lua.create_function(|lua, path: String| {
                FileContext::of(lua)?.on_file_end(move || {
                    let _ = fs::write(&path, "hook ran");
                });
                Ok(())
            })?,
        )?;
        Ok(())
    }

    fn run_script(dir: &Path, script: &str) -> (FileReport, RunContext) {
        let path = dir.join("vm.lua");
        fs::write(&path, script).unwrap();
        let run = Arc::new(RunContext::new(
            RunDir::create(&dir.join("runs")).unwrap(),
            crate::config::Config::empty(dir),
            Pool::new(PoolMode::Auto),
            Default::default(),
            Default::default(),
        ));
        let file = TestFile::new("vm.lua", path, dir);
        let spec = LuaFile {
            file: &file,
            index: 0,
            attempt: 1,
            cancel: Cancel::for_file(None),
            source: None,
        };
        let report = run_file_with(
            Arc::clone(&run),
            spec,
            &[super::super::pack::install, fake_vm_module],
        );
        (report, Arc::into_inner(run).unwrap())
    }

    #[test]
    fn consoles_reach_the_report_and_the_log_and_hooks_run_on_raise() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("c1.txt");
        let second = dir.path().join("c2.txt");
        fs::write(&first, "first console\n").unwrap();
        let lines: Vec<String> = (1..=30).map(|i| format!("line {i}\r")).collect();
        fs::write(&second, lines.join("\n")).unwrap();
        let hook_marker = dir.path().join("hook");
        let script = format!(
            "assert_eq(1, provium.console({first:?}))\n\
             assert_eq(2, provium.console({second:?}))\n\
             provium.on_end({hook:?})\n\
             error('kernel panic')\n",
            first = first.display().to_string(),
            second = second.display().to_string(),
            hook = hook_marker.display().to_string(),
        );
        let (report, _run) = run_script(dir.path(), &script);
        assert_eq!(report.outcome, Outcome::Failed);
        assert_eq!(report.file_error.as_deref(), Some("kernel panic"));
        let expected_tail: Vec<String> = (11..=30).map(|i| format!("line {i}")).collect();
        assert_eq!(report.console_tail, Some(expected_tail));
        assert!(hook_marker.is_file(), "cleanup hook did not run");
        let log = fs::read_to_string(report.log_path.unwrap()).unwrap();
        assert!(log.contains("--- console 1 ---\nfirst console\n"), "{log}");
        assert!(log.contains("--- console 2 ---\nline 1\r\n"), "{log}");
        assert!(log.contains("vm.lua:4: kernel panic"), "{log}");
    }

    #[test]
    fn passing_files_with_consoles_show_no_tail_and_lose_their_log() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("c.txt");
        fs::write(&console, "booted\n").unwrap();
        let hook_marker = dir.path().join("hook");
        let script = format!(
            "provium.console({c:?})\nprovium.on_end({h:?})\ntest('fine', function() end)\n",
            c = console.display().to_string(),
            h = hook_marker.display().to_string(),
        );
        let (report, run) = run_script(dir.path(), &script);
        assert_eq!(report.outcome, Outcome::Passed);
        assert_eq!(report.console_tail, None);
        assert_eq!(report.log_path, None);
        assert!(hook_marker.is_file());
        assert!(!run.run_dir.log_path("vm.lua").exists());
    }

    #[test]
    fn a_broken_vm_is_an_error_and_an_assertion_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (report, _run) = run_script(
            dir.path(),
            "test('asserts', function() assert_eq(1, 2) end)\n\
             test('broke', function() provium.break_vm('VM vm.lua#1 broke during exec: the kernel panicked') end)\n\
             test('rewrapped', function()\n\
               local ok, err = pcall(provium.break_vm, 'VM vm.lua#1 broke during dmesg: QEMU exited')\n\
               error('while checking: ' .. err)\n\
             end)\n",
        );
        let outcomes: Vec<(&str, &Outcome)> = report
            .subtests
            .iter()
            .map(|s| (s.name.as_str(), &s.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("asserts", &Outcome::Failed),
                ("broke", &Outcome::Error),
                ("rewrapped", &Outcome::Error)
            ]
        );
        assert_eq!(report.outcome, Outcome::Error, "the worst outcome wins");

        let (only_assert, _run) = run_script(dir.path(), "assert(false, 'nope')\n");
        assert_eq!(only_assert.outcome, Outcome::Failed);
        let (file_level, _run) = run_script(
            dir.path(),
            "provium.break_vm('VM vm.lua#1 broke during boot')\n",
        );
        assert_eq!(file_level.outcome, Outcome::Error);
        assert_eq!(
            file_level.file_error.as_deref(),
            Some("VM vm.lua#1 broke during boot")
        );
    }
}
