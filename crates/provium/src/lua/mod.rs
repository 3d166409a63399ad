//! The Lua test framework: one fresh Lua 5.4 state per test file.
//!
//! [`run_file`] is the whole life of one test file: a new state with the full standard
//! library, the framework globals, the `provium` table, the script, then cleanup. VM
//! code reaches the file it serves through [`FileContext::of`], registers consoles
//! and file-end hooks there, and adds `provium.*` functions via [`PROVIUM_MODULES`].

pub mod fixture;
pub mod framework;
pub mod pack;
pub mod vm_api;
pub mod vm_args;
pub mod vm_values;

use crate::schedule::pool::FileSlot;
use std::cell::RefCell;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use mlua::{Function, Lua, Table, Value};
use regex::Regex;

use crate::discover::TestFile;
use crate::report::{FileReport, FileStatus, SubtestStatus};
use crate::runs::{FileLog, RunContext};
use framework::Framework;

/// Installers of the `provium` table, run in order for every file. VM bindings add
/// their installer here (`provium.create`, `provium.fixture`, ...).
pub type ModuleInstaller = fn(&Lua, &Table) -> mlua::Result<()>;
pub const PROVIUM_MODULES: &[ModuleInstaller] = &[pack::install, vm_api::install, fixture::install];

/// Lines of the last console shown under a failing file.
pub const CONSOLE_TAIL_LINES: usize = 20;

const PLAIN_ERRORS: &str = include_str!("plain_errors.lua");
const PLAIN_ERRORS_KEY: &str = "provium.plain_errors";

/// A cleanup action run when the file ends, raises or its thread panics.
type CleanupHook = Box<dyn FnOnce()>;

/// Per-file state shared by the framework and VM bindings; lives as the Lua state's
/// app data for the duration of the file.
pub struct FileContext {
    run: Arc<RunContext>,
    name: String,
    path: PathBuf,
    index: usize,
    log: RefCell<Option<FileLog>>,
    consoles: RefCell<Vec<PathBuf>>,
    cleanup: RefCell<Vec<CleanupHook>>,
    /// This file's place in the resource pool; VM boots acquire through it, and
    /// dropping it (file end) returns whatever the file still holds.
    pool_slot: FileSlot,
}

impl FileContext {
    fn new(run: Arc<RunContext>, file: &TestFile, index: usize, log: Option<FileLog>) -> Self {
        FileContext {
            run: Arc::clone(&run),
            name: file.name.clone(),
            path: file.path.clone(),
            index,
            log: RefCell::new(log),
            consoles: RefCell::new(Vec::new()),
            cleanup: RefCell::new(Vec::new()),
            pool_slot: run.pool.enter_file(file.name.clone()),
        }
    }

    /// The context of the file running in `lua`.
    pub fn of(lua: &Lua) -> mlua::Result<Rc<FileContext>> {
        lua.app_data_ref::<Rc<FileContext>>()
            .map(|ctx| Rc::clone(&ctx))
            .ok_or_else(|| {
                mlua::Error::RuntimeError(
                    "provium: this Lua state is not running a test file".to_string(),
                )
            })
    }

    pub fn pool_slot(&self) -> &FileSlot {
        &self.pool_slot
    }

    pub fn run(&self) -> &Arc<RunContext> {
        &self.run
    }

    /// Path relative to the test root, as reported.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A number unique to this file within the run (its dispatch position), for short
    /// unique names under the run directory such as socket paths.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Appends `text` to the file's log (kept only if the file fails).
    pub fn log(&self, text: &str) {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.write(text);
        }
    }

    /// Records a VM console capture file; returns its 1-based number. The failure
    /// report shows the tail of the last one registered; the log gets all of them.
    pub fn register_console(&self, path: PathBuf) -> usize {
        let mut consoles = self.consoles.borrow_mut();
        consoles.push(path);
        consoles.len()
    }

    pub fn consoles(&self) -> Vec<PathBuf> {
        self.consoles.borrow().clone()
    }

    /// Runs `hook` when the file ends, however it ends (hooks run last-registered
    /// first). Used to kill VMs the script left running.
    pub fn on_file_end(&self, hook: impl FnOnce() + 'static) {
        self.cleanup.borrow_mut().push(Box::new(hook));
    }

    fn run_cleanup(&self) {
        loop {
            // Taken one at a time so a hook may register another without a borrow clash.
            let Some(hook) = self.cleanup.borrow_mut().pop() else {
                break;
            };
            // One failing hook must not leave the remaining VMs running.
            let _ = catch_unwind(AssertUnwindSafe(hook));
        }
    }
}

impl Drop for FileContext {
    fn drop(&mut self) {
        // Reached without run_cleanup only when the file's thread panicked.
        self.run_cleanup();
    }
}

/// Wraps a Rust-backed Lua function so its errors reach Lua as plain strings located
/// at the caller's line (`file.lua:12: message`), like Lua's own library errors,
/// instead of mlua error objects carrying a Rust traceback.
pub fn plain_errors(lua: &Lua, f: Function) -> mlua::Result<Function> {
    let wrap: Function = match lua.named_registry_value::<Option<Function>>(PLAIN_ERRORS_KEY)? {
        Some(wrap) => wrap,
        None => {
            let plain_message = lua.create_function(|_, raised: Value| {
                Ok(match raised {
                    Value::Error(e) => Some(root_cause(&e)),
                    _ => None,
                })
            })?;
            let wrap: Function = lua
                .load(PLAIN_ERRORS)
                .set_name("=provium plain_errors")
                .call(plain_message)?;
            lua.set_named_registry_value(PLAIN_ERRORS_KEY, wrap.clone())?;
            wrap
        }
    };
    wrap.call(f)
}

/// Creates the global `provium` table and runs every [`PROVIUM_MODULES`] installer.
pub fn install_provium_table(lua: &Lua) -> mlua::Result<Table> {
    install_modules(lua, PROVIUM_MODULES)
}

fn install_modules(lua: &Lua, modules: &[ModuleInstaller]) -> mlua::Result<Table> {
    let provium = lua.create_table()?;
    for install in modules {
        install(lua, &provium)?;
    }
    lua.globals().set("provium", provium.clone())?;
    Ok(provium)
}

/// The message of an mlua error without the Rust-side wrapping (callback tracebacks).
pub fn root_cause(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { cause, .. } => root_cause(cause),
        mlua::Error::RuntimeError(message) => message.clone(),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", root_cause(cause)),
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => {
            let which = match name {
                Some(name) => format!("bad argument '{name}'"),
                None => format!("bad argument #{pos}"),
            };
            let to = to
                .as_ref()
                .map(|t| format!(" to '{t}'"))
                .unwrap_or_default();
            format!("{which}{to}: {}", root_cause(cause))
        }
        other => other.to_string(),
    }
}

/// What a raised Lua value says, as `lua.c` would print it.
pub fn error_message(raised: &Value) -> String {
    match raised {
        Value::String(s) => s.to_string_lossy(),
        Value::Error(e) => root_cause(e),
        Value::Integer(_) | Value::Number(_) => raised.to_string().unwrap_or_default(),
        Value::Table(t)
            if t.metatable()
                .is_some_and(|m| m.contains_key("__tostring").unwrap_or(false)) =>
        {
            raised.to_string().unwrap_or_else(|e| e.to_string())
        }
        Value::UserData(u)
            if u.metatable()
                .is_ok_and(|m| m.contains("__tostring").unwrap_or(false)) =>
        {
            raised.to_string().unwrap_or_else(|e| e.to_string())
        }
        other => format!("(error object is a {} value)", other.type_name()),
    }
}

/// Removes the framework's own frames (the prelude and the `xpcall` it runs tests
/// under) from a traceback, leaving the user's frames.
pub fn clean_traceback(trace: &str) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let prelude = |l: &str| l.contains("provium prelude");
        let xpcall_under_prelude =
            line.contains("in function 'xpcall'") && lines.get(i + 1).is_some_and(|l| prelude(l));
        if !prelude(line) && !xpcall_under_prelude {
            kept.push(*line);
        }
    }
    kept.join("\n")
}

/// Drops a leading `chunk:line: ` location, which the report omits (the log keeps it).
pub fn strip_location(message: &str) -> &str {
    static LOCATION: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"^(?:\[string "[^"\n]*"\]|[^\s:][^:\n]*):\d+: "#).expect("valid regex")
    });
    match LOCATION.find(message) {
        Some(found) => &message[found.end()..],
        None => message,
    }
}

/// A failure of the script outside any `test()` block.
struct FileError {
    /// As shown under the file in the report.
    shown: String,
    /// As logged: the full message and the traceback.
    logged: String,
}

struct Execution {
    outcome: framework::Outcome,
    error: Option<FileError>,
}

/// Runs one test file to completion on the calling thread and reports its outcome.
/// Its log is written as it goes and deleted when the file passes.
/// Appends every console in full, each under its `--- console <n> ---` heading (SPEC §4).
pub(crate) fn append_consoles(text: &mut String, consoles: &[PathBuf]) {
    for (n, console) in consoles.iter().enumerate() {
        text.push_str(&format!("\n--- console {} ---\n", n + 1));
        match fs::read(console) {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) => text.push_str(&format!("(cannot read {}: {e})\n", console.display())),
        }
    }
}

pub fn run_file(run: Arc<RunContext>, file: &TestFile, index: usize) -> FileReport {
    run_file_with(run, file, index, PROVIUM_MODULES)
}

fn run_file_with(
    run: Arc<RunContext>,
    file: &TestFile,
    index: usize,
    modules: &[ModuleInstaller],
) -> FileReport {
    let started = Instant::now();
    let log_path = run.run_dir.log_path(&file.name);
    let (log, log_error) = match FileLog::create(log_path.clone()) {
        Ok(log) => (Some(log), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let ctx = Rc::new(FileContext::new(Arc::clone(&run), file, index, log));
    ctx.log(&format!(
        "provium log for {}\nfile: {}\nrun:  {}\n\n",
        file.name,
        file.path.display(),
        run.run_dir.path().display()
    ));

    // SAFETY: test files are the user's own code and SPEC §3 gives them the full
    // standard library, including `debug` and C modules, which only the unsafe
    // constructor allows. Nothing else shares this state.
    let lua = unsafe { Lua::unsafe_new() };
    lua.set_app_data(Rc::clone(&ctx));
    let execution = execute(&lua, &run, file, modules).unwrap_or_else(|e| Execution {
        outcome: framework::Outcome::default(),
        error: Some(FileError {
            shown: format!("internal error: {}", root_cause(&e)),
            logged: format!("internal error: {e}"),
        }),
    });
    ctx.run_cleanup();
    lua.remove_app_data::<Rc<FileContext>>();
    drop(lua);

    let Execution { outcome, error } = execution;
    let failed_subtest = outcome
        .subtests
        .iter()
        .any(|s| matches!(s.status, SubtestStatus::Failed { .. }));
    let status = match outcome.file_todo {
        Some(reason) => FileStatus::Todo { reason },
        None if error.is_some() || failed_subtest => FileStatus::Failed,
        None => FileStatus::Passed,
    };
    let duration = started.elapsed();
    let consoles = ctx.consoles();

    let mut tail = format!(
        "\nresult: {} ({:.3}s)\n",
        match &status {
            FileStatus::Passed => "ok",
            FileStatus::Failed => "FAIL",
            FileStatus::Todo { .. } => "todo",
        },
        duration.as_secs_f64()
    );
    if let Some(error) = &error {
        tail.push_str("error outside test():\n");
        for line in error.logged.lines() {
            tail.push_str(&format!("    {line}\n"));
        }
    }
    append_consoles(&mut tail, &consoles);
    ctx.log(&tail);

    let failed = status.is_failure();
    let log = ctx.log.borrow_mut().take();
    let kept_log = match log {
        Some(log) if !failed => {
            log.delete(run.run_dir.path());
            None
        }
        Some(_) => Some(log_path),
        None => None,
    };
    let mut file_error = error.map(|e| e.shown);
    if failed {
        if let Some(log_error) = log_error {
            let note = format!("(log not written: {log_error})");
            file_error = Some(match file_error {
                Some(e) => format!("{e}\n{note}"),
                None => note,
            });
        }
    }
    FileReport {
        name: file.name.clone(),
        status,
        duration,
        subtests: outcome.subtests,
        file_error,
        console_tail: match (failed, consoles.last()) {
            (true, Some(console)) => Some(console_tail(console)),
            _ => None,
        },
        log_path: kept_log,
    }
}

fn execute(
    lua: &Lua,
    run: &RunContext,
    file: &TestFile,
    modules: &[ModuleInstaller],
) -> mlua::Result<Execution> {
    let framework = Framework::install(lua)?;
    install_modules(lua, modules)?;
    extend_package_path(lua, &run.test_root)?;

    let plain = |message: String| FileError {
        shown: message.clone(),
        logged: message,
    };
    let mut source = match fs::read(&file.path) {
        Ok(source) => source,
        Err(e) => {
            return Ok(Execution {
                outcome: framework.finish(),
                error: Some(plain(format!("cannot read {}: {e}", file.path.display()))),
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
                outcome: framework.finish(),
                error: Some(plain(message)),
            })
        }
        Err(e) => return Err(e),
    };
    let (completed, raised, trace) = framework.run_protected(chunk)?;
    let outcome = framework.finish();
    let error = match outcome.exit_code {
        Some(0) => None,
        Some(code) => Some(plain(format!("os.exit({code}) called"))),
        None if completed || outcome.file_todo.is_some() => None,
        None => {
            let full = error_message(&raised);
            let mut logged = full.clone();
            if let Some(trace) = trace {
                logged.push('\n');
                logged.push_str(&clean_traceback(&trace));
            }
            Some(FileError {
                shown: strip_location(&full).to_string(),
                logged,
            })
        }
    };
    Ok(Execution { outcome, error })
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
    use crate::runs::RunDir;
    use crate::schedule::pool::PoolMode;

    /// Stands in for VM bindings: `provium.console(path)` registers a console and
    /// `provium.on_end(path)` registers a hook that creates `path`.
    fn fake_vm_module(lua: &Lua, provium: &Table) -> mlua::Result<()> {
        provium.set(
            "console",
            lua.create_function(|lua, path: String| {
                Ok(FileContext::of(lua)?.register_console(PathBuf::from(path)))
            })?,
        )?;
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
        let run = Arc::new(RunContext {
            run_dir: RunDir::create(&dir.join("runs")).unwrap(),
            test_root: dir.to_path_buf(),
            config: crate::config::Config::empty(dir),
            project_root: dir.to_path_buf(),
            pool: crate::schedule::pool::Pool::new(PoolMode::Auto),
            vm_host: Default::default(),
        });
        let file = TestFile {
            name: "vm.lua".into(),
            path,
        };
        let report = run_file_with(Arc::clone(&run), &file, 0, &[pack::install, fake_vm_module]);
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
        assert_eq!(report.status, FileStatus::Failed);
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
        assert_eq!(report.status, FileStatus::Passed);
        assert_eq!(report.console_tail, None);
        assert_eq!(report.log_path, None);
        assert!(hook_marker.is_file());
        assert!(!run.run_dir.log_path("vm.lua").exists());
    }

    #[test]
    fn framework_frames_leave_the_traceback() {
        let trace = "stack traceback:\n\t[C]: in function 'error'\n\tt.lua:2: in function <t.lua:1>\n\t[C]: in function 'xpcall'\n\tprovium prelude:15: in function <provium prelude:13>\n\tprovium prelude:28: in function 'test'\n\tt.lua:1: in main chunk";
        assert_eq!(
            clean_traceback(trace),
            "stack traceback:\n\t[C]: in function 'error'\n\tt.lua:2: in function <t.lua:1>\n\tt.lua:1: in main chunk"
        );
    }

    #[test]
    fn locations_are_stripped_once() {
        assert_eq!(strip_location("tests/a.lua:12: boom"), "boom");
        assert_eq!(strip_location("a.lua:3: b.lua:4: x"), "b.lua:4: x");
        assert_eq!(strip_location("[string \"x\"]:1: y"), "y");
        assert_eq!(
            strip_location("command failed (exit 1): cat"),
            "command failed (exit 1): cat"
        );
        assert_eq!(strip_location("expected 0, got -13"), "expected 0, got -13");
    }
}
