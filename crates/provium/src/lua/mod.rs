//! The Lua layer: one fresh Lua 5.4 state per test file, binding the framework
//! (`test`, `todo`, asserts) and the `provium` table to the engine below it.
//!
//! [`file`] is the one life cycle of a Lua file (test files and fixture builds). VM
//! bindings reach the file they serve through [`FileContext::of`], which holds the
//! file's VMs, consoles, log and pool slot; they only convert values and call the VM
//! layer. A binding raises through [`raise`], which remembers failures of the
//! infrastructure so the file's outcome can say `error` rather than `failed`.

mod asserts;
pub mod boot_options;
pub mod file;
pub mod fixture;
pub mod framework;
pub mod lsp;
pub mod network;
pub mod options;
pub mod pack;
pub mod vm_api;
pub mod vm_args;
pub mod vm_handle;
pub mod vm_kernel;
mod vm_nics;
pub mod vm_shell;
pub mod vm_values;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use mlua::{Function, Lua, Table, Value};
use regex::Regex;

use crate::cancel::Cancel;
use crate::discover::TestFile;
use crate::pool::FileSlot;
use crate::report::Outcome;
use crate::runs::{FileLog, RunContext};
use crate::vm::fleet::Fleet;

pub use file::run_file;

/// Installers of the `provium` table, run in order for every file. VM bindings add
/// their installer here (`provium.create`, `provium.fixture`, ...).
pub type ModuleInstaller = fn(&Lua, &Table) -> mlua::Result<()>;
pub const PROVIUM_MODULES: &[ModuleInstaller] = &[
    framework::install_provium,
    pack::install,
    vm_api::install,
    network::install,
    fixture::install,
];

/// Lines of the last console shown under a failing file.
pub const CONSOLE_TAIL_LINES: usize = crate::vm::CONSOLE_TAIL_LINES;

const PLAIN_ERRORS: &str = include_str!("plain_errors.lua");
const PLAIN_ERRORS_KEY: &str = "provium.plain_errors";

/// A cleanup action run when the file ends, raises or its thread panics.
type CleanupHook = Box<dyn FnOnce()>;

/// Per-file state shared by the framework and VM bindings; lives as the Lua state's
/// app data for the duration of the file.
pub struct FileContext {
    run: Arc<RunContext>,
    file: TestFile,
    index: usize,
    /// 1 for the file's first run; more with `--retries`.
    attempt: u32,
    /// When the file must stop (its limits, the run's interrupt).
    cancel: Cancel,
    log: RefCell<Option<FileLog>>,
    consoles: RefCell<Vec<PathBuf>>,
    cleanup: RefCell<Vec<CleanupHook>>,
    /// The VMs the file created; whatever still runs is killed when the file ends.
    fleet: Fleet,
    /// Messages of infrastructure failures raised in this file (a VM that broke, a
    /// refused boot): a failure carrying one is an `error`, not a `failed` test.
    broken: RefCell<Vec<String>>,
    /// This file's place in the resource pool; VM boots acquire through it, and
    /// dropping it (file end) returns whatever the file still holds.
    pool_slot: FileSlot,
    /// The file's networks (`provium.network`), ended after its VMs.
    networks: RefCell<Vec<Rc<network::Network>>>,
}

impl FileContext {
    fn new(
        run: Arc<RunContext>,
        file: &TestFile,
        (index, attempt): (usize, u32),
        cancel: Cancel,
        log: Option<FileLog>,
    ) -> Self {
        FileContext {
            run: Arc::clone(&run),
            file: file.clone(),
            index,
            attempt,
            cancel,
            log: RefCell::new(log),
            consoles: RefCell::new(Vec::new()),
            cleanup: RefCell::new(Vec::new()),
            fleet: Fleet::default(),
            broken: RefCell::new(Vec::new()),
            pool_slot: run.pool.enter_file(file.name.clone()),
            networks: RefCell::new(Vec::new()),
        }
    }

    /// The file's networks, in creation order.
    pub fn networks(&self) -> Vec<Rc<network::Network>> {
        self.networks.borrow().clone()
    }

    pub fn add_network(&self, network: Rc<network::Network>) {
        self.networks.borrow_mut().push(network);
    }

    /// Whether `network` is one of this file's.
    pub fn owns_network(&self, network: &Rc<network::Network>) -> bool {
        self.networks
            .borrow()
            .iter()
            .any(|n| Rc::ptr_eq(n, network))
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

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Path relative to the test root, as reported.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The directory of the `<path>` argument the file came from (`require` and the
    /// fixture search stop there).
    pub fn root_dir(&self) -> &Path {
        &self.file.root.dir
    }

    /// Which run of the file this is (1, then more with `--retries`).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this file must stop.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
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
    /// first, before the file's VMs are killed).
    pub fn on_file_end(&self, hook: impl FnOnce() + 'static) {
        self.cleanup.borrow_mut().push(Box::new(hook));
    }

    /// Remembers that `message` reports a failure of the infrastructure.
    pub fn note_broken(&self, message: &str) {
        self.broken.borrow_mut().push(message.to_string());
    }

    /// How a failure with this raised message ended: `Error` when it carries an
    /// infrastructure failure raised in this file (perhaps re-raised with more
    /// context), `Failed` otherwise.
    pub fn classify(&self, message: &str) -> Outcome {
        let broken = self.broken.borrow();
        if broken.iter().any(|b| message.contains(b.as_str())) {
            Outcome::Error
        } else {
            Outcome::Failed
        }
    }

    /// The file's end: its hooks, then every VM it left running is killed.
    fn end(&self) {
        loop {
            // Taken one at a time so a hook may register another without a borrow clash.
            let Some(hook) = self.cleanup.borrow_mut().pop() else {
                break;
            };
            // One failing hook must not leave the remaining VMs running.
            let _ = catch_unwind(AssertUnwindSafe(hook));
        }
        let killed = catch_unwind(AssertUnwindSafe(|| self.fleet.kill_running()));
        for (vm, note) in killed.unwrap_or_default() {
            self.log(&format!(
                "VM {vm} was still running when the file ended: {note}\n"
            ));
        }
        // After the VMs: their QEMUs no longer send into the switches.
        for network in self.networks.borrow_mut().drain(..) {
            if let Some(problem) = network.end() {
                self.log(&format!("{problem}\n"));
            }
        }
    }
}

impl Drop for FileContext {
    fn drop(&mut self) {
        // Reached with work left only when the file's thread panicked.
        self.end();
    }
}

/// The error a binding raises: `message` as a plain string (located at the caller by
/// [`plain_errors`]); remembered as an infrastructure failure when `broke` says so.
pub fn raise(lua: &Lua, message: String, broke: bool) -> mlua::Error {
    if broke {
        if let Ok(ctx) = FileContext::of(lua) {
            ctx.note_broken(&message);
        }
    }
    mlua::Error::RuntimeError(message)
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
        Value::Table(t) => format!("(error object is a table: {})", render_table(t, 3)),
        other => format!("(error object is a {} value)", other.type_name()),
    }
}

/// A table as Lua source would write it: the array part, then the other keys sorted,
/// `{ ... }` below `depth` levels (tables may hold themselves).
fn render_table(table: &Table, depth: usize) -> String {
    if depth == 0 {
        return "{ ... }".to_string();
    }
    let render = |value: &Value| match value {
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Table(t) => render_table(t, depth - 1),
        Value::Integer(_) | Value::Number(_) | Value::Boolean(_) | Value::Nil => {
            value.to_string().unwrap_or_default()
        }
        other => other.type_name().to_string(),
    };
    let length = table.raw_len();
    let mut parts: Vec<String> = (1..=length)
        .map(|i| render(&table.raw_get::<Value>(i).unwrap_or(Value::Nil)))
        .collect();
    let mut named: Vec<(String, String)> = table
        .clone()
        .pairs::<Value, Value>()
        .filter_map(Result::ok)
        .filter(|(key, _)| !matches!(key, Value::Integer(i) if *i >= 1 && (*i as usize) <= length))
        .map(|(key, value)| {
            let key = match &key {
                Value::String(s) => s.to_string_lossy(),
                other => format!("[{}]", render(other)),
            };
            (key, render(&value))
        })
        .collect();
    named.sort();
    parts.extend(named.into_iter().map(|(k, v)| format!("{k} = {v}")));
    if parts.is_empty() {
        "{}".to_string()
    } else {
        format!("{{ {} }}", parts.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn raised_tables_are_rendered() {
        let lua = Lua::new();
        let raised: Value = lua
            .load("return { code = 42, why = 'no', list = { 1, 2 } }")
            .eval()
            .unwrap();
        assert_eq!(
            error_message(&raised),
            "(error object is a table: { code = 42, list = { 1, 2 }, why = \"no\" })"
        );
        let nested: Value = lua
            .load("local t = {}; t.self = t; return t")
            .eval()
            .unwrap();
        assert_eq!(
            error_message(&nested),
            "(error object is a table: { self = { self = { self = { ... } } } })"
        );
        assert_eq!(
            error_message(&Value::Boolean(false)),
            "(error object is a boolean value)"
        );
    }
}
