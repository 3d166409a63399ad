//! Globals: `test`, `todo`, `assert`, `assert_eq`, `assert_contains` (and `print`,
//! `os.exit` and `os.execute`, rebound so one file cannot garble the report, end the
//! whole run, or make the run deaf to Ctrl-C).
//!
//! The globals themselves are a small Lua prelude (`prelude.lua`) that raises with
//! `error(msg, 2)`; the Rust hooks here keep the sub-test record and format messages.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::asserts::{self, lua_tostring};
use super::file::stop_outcome;
use super::options;
use super::{clean_traceback, error_message, strip_location, FileContext};
use crate::cancel::{self, Stop};
use crate::duration;
use crate::report::{Event, Outcome, SubtestReport};

const PRELUDE: &str = include_str!("prelude.lua");

/// The sub-test record of one file, filled while its script runs.
#[derive(Debug, Default)]
struct State {
    subtests: Vec<SubtestReport>,
    current: Option<(String, Instant)>,
    subtest_todo: Option<Option<String>>,
    file_todo: Option<Option<String>>,
    exit_code: Option<i64>,
    /// The file had to stop inside a sub-test (its time ran out, an interrupt).
    stopped: Option<Stop>,
}

/// What the framework recorded once the file's script returned or raised.
#[derive(Debug, Default)]
pub struct Record {
    pub subtests: Vec<SubtestReport>,
    /// `Some(reason)` when `todo()` was called outside any `test()`.
    pub file_todo: Option<Option<String>>,
    /// The code passed to `os.exit`, normalised to an integer (0 = success).
    pub exit_code: Option<i64>,
    /// Why the file had to stop inside a sub-test, which then ended the file.
    pub stopped: Option<Stop>,
}

/// The installed framework of one Lua state.
pub struct Framework {
    state: Rc<RefCell<State>>,
    protected: Function,
}

impl Framework {
    /// Installs the globals into `lua`; the file's [`FileContext`] must already be set
    /// as app data (sub-test results are logged through it).
    pub fn install(lua: &Lua) -> mlua::Result<Framework> {
        let state = Rc::new(RefCell::new(State::default()));
        let globals = lua.globals();
        // Captured before user code runs, so a test redefining `tostring` cannot
        // change how failures are rendered.
        let tostring: Function = globals.get("tostring")?;
        let hooks = lua.create_table()?;
        register_test_hooks(lua, &hooks, &state)?;
        asserts::register_hooks(lua, &hooks, &tostring)?;
        {
            let tostring = tostring.clone();
            hooks.set(
                "print",
                lua.create_function(move |lua, args: MultiValue| {
                    let parts = args
                        .into_iter()
                        .map(|v| lua_tostring(&tostring, v))
                        .collect::<mlua::Result<Vec<_>>>()?;
                    let line = format!("{}\n", parts.join("\t"));
                    log(lua, &line);
                    Ok(())
                })?,
            )?;
        }
        hooks.set(
            "execute",
            super::plain_errors(lua, lua.create_function(execute)?)?,
        )?;
        let protected: Function = lua.load(PRELUDE).set_name("=provium prelude").call(hooks)?;
        Ok(Framework { state, protected })
    }

    /// Runs `f` (the file's main chunk) with the framework's error handler: returns
    /// whether it completed, the raised value and a traceback from where it was raised.
    pub fn run_protected(&self, f: Function) -> mlua::Result<(bool, Value, Option<String>)> {
        self.protected.call(f)
    }

    pub fn finish(self) -> Record {
        let mut state = self.state.borrow_mut();
        Record {
            subtests: std::mem::take(&mut state.subtests),
            file_todo: state.file_todo.take(),
            exit_code: state.exit_code,
            stopped: state.stopped.take(),
        }
    }
}

/// `os.execute` without C's `system()`, which ignores SIGINT and SIGQUIT in the whole
/// process while the command runs (so Ctrl-C would be lost for every file). Same
/// results as Lua's: `true|nil, "exit"|"signal", code`; with no command, `true` (a
/// shell exists). The command's output goes to the file's log, not the report.
fn execute(lua: &Lua, cmd: Value) -> mlua::Result<MultiValue> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::ExitStatusExt;
    let cmd = match cmd {
        Value::Nil => return Ok(MultiValue::from_vec(vec![Value::Boolean(true)])),
        Value::String(cmd) => cmd,
        Value::Integer(_) | Value::Number(_) => lua.create_string(cmd.to_string()?)?,
        other => {
            return Err(mlua::Error::RuntimeError(format!(
                "os.execute: argument 1 (command) must be a string, not {}",
                super::vm_args::describe(&other)
            )))
        }
    };
    let mut command = std::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(std::ffi::OsStr::from_bytes(&cmd.as_bytes()))
        .stdin(std::process::Stdio::null());
    let output =
        match run_stoppable(command).map_err(|stop| mlua::Error::RuntimeError(stop.to_string()))? {
            Ok(output) => output,
            Err(e) => {
                return Ok(MultiValue::from_vec(vec![
                    Value::Nil,
                    Value::String(lua.create_string(format!("cannot run /bin/sh: {e}"))?),
                    Value::Integer(e.raw_os_error().unwrap_or(0).into()),
                ]))
            }
        };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !text.is_empty() {
        log(lua, &text);
    }
    let (how, code) = match (output.status.code(), output.status.signal()) {
        (Some(code), _) => ("exit", code),
        (None, Some(signal)) => ("signal", signal),
        (None, None) => ("exit", -1),
    };
    let ok = if how == "exit" && code == 0 {
        Value::Boolean(true)
    } else {
        Value::Nil
    };
    Ok(MultiValue::from_vec(vec![
        ok,
        Value::String(lua.create_string(how)?),
        Value::Integer(code.into()),
    ]))
}

/// Runs `command` to its end, with its output captured; in its own process group, so
/// that when the file must stop (a timeout, an interrupt) the whole group is killed
/// and the file raises instead of waiting.
fn run_stoppable(
    mut command: std::process::Command,
) -> Result<std::io::Result<std::process::Output>, Stop> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let spawned = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Ok(Err(e)),
    };
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
    .collect();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        if let Err(stop) = cancel::checkpoint() {
            // SAFETY: kill(2) on the process group this command leads.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(stop);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Ok(Ok(std::process::Output {
        status,
        stdout: outputs.next().unwrap_or_default(),
        stderr: outputs.next().unwrap_or_default(),
    }))
}

/// `test(name, {timeout = D}, fn)`'s limit; the only option a sub-test takes.
fn subtest_limit(opts: &Value) -> Result<Option<std::time::Duration>, String> {
    let opts = options::read(opts, "opts", &["timeout"]).map_err(|e| e.to_string())?;
    match options::get(&opts, "timeout").map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        value => lua_duration(&value)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| format!("timeout: {e}")),
    }
}

/// A duration given in Lua: seconds as a number, or a string with a unit (`"30s"`).
pub fn lua_duration(value: &Value) -> Result<std::time::Duration, String> {
    match value {
        Value::Integer(n) => duration::from_seconds(*n as f64).map_err(|e| e.to_string()),
        Value::Number(n) => duration::from_seconds(*n).map_err(|e| e.to_string()),
        Value::String(s) => duration::parse(&s.to_string_lossy()).map_err(|e| e.to_string()),
        other => Err(format!(
            "must be seconds or a duration string (\"30s\"), not {}",
            super::vm_args::shown(other)
        )),
    }
}

/// Installs `provium.timeout(D)`: the file's own time limit, from its start (0: none).
pub fn install_provium(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    let timeout = lua.create_function(|lua, limit: Value| {
        let limit = lua_duration(&limit)
            .map_err(|e| mlua::Error::RuntimeError(format!("provium.timeout: {e}")))?;
        FileContext::of(lua)?
            .cancel()
            .set_file_limit((!limit.is_zero()).then_some(limit));
        Ok(())
    })?;
    provium.set("timeout", super::plain_errors(lua, timeout)?)
}

fn optional_reason(lua: &Lua, value: Value) -> mlua::Result<Option<String>> {
    match value {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_string_lossy())),
        other => {
            let tostring: Function = lua.globals().get("tostring")?;
            lua_tostring(&tostring, other).map(Some)
        }
    }
}

fn log(lua: &Lua, text: &str) {
    // Outside a test file (unit tests of the framework) there is no log to write.
    if let Ok(ctx) = FileContext::of(lua) {
        ctx.log(text);
    }
}

fn register_test_hooks(lua: &Lua, hooks: &Table, state: &Rc<RefCell<State>>) -> mlua::Result<()> {
    let st = state.clone();
    hooks.set(
        "begin_test",
        lua.create_function(move |lua, (name, opts, body): (Value, Value, Value)| {
            let mut state = st.borrow_mut();
            let name = match name {
                Value::String(s) => s.to_string_lossy(),
                Value::Integer(_) | Value::Number(_) => name.to_string()?,
                other => {
                    return Ok(Some(format!(
                        "test(name, fn): name must be a string, got {}",
                        other.type_name()
                    )))
                }
            };
            if !matches!(body, Value::Function(_)) {
                return Ok(Some(format!(
                    "test(\"{name}\", fn): fn must be a function, got {}",
                    body.type_name()
                )));
            }
            let limit = match subtest_limit(&opts) {
                Ok(limit) => limit,
                Err(problem) => return Ok(Some(format!("test(\"{name}\", opts, fn): {problem}"))),
            };
            if let Some((outer, _)) = &state.current {
                return Ok(Some(format!(
                    "test(\"{name}\") inside test(\"{outer}\"): sub-tests cannot be nested"
                )));
            }
            if let Ok(ctx) = FileContext::of(lua) {
                ctx.cancel().enter_subtest(&name, limit);
            }
            state.current = Some((name, Instant::now()));
            state.subtest_todo = None;
            Ok(None)
        })?,
    )?;

    let st = state.clone();
    hooks.set(
        "end_test",
        lua.create_function(
            move |lua, (ok, raised, trace): (bool, Value, Option<String>)| {
                let mut state = st.borrow_mut();
                let Some((name, started)) = state.current.take() else {
                    return Ok(false);
                };
                let duration = started.elapsed();
                let stopping_file = state.exit_code.is_some();
                let ctx = FileContext::of(lua).ok();
                let stopped = ctx.as_ref().and_then(|ctx| ctx.cancel().leave_subtest());
                // A stop of the whole file (not only this sub-test's limit) ends the
                // file here, naming the sub-test it was in.
                let stopping_file = stopping_file
                    || match &stopped {
                        Some(stop @ (Stop::FileTimeout { .. } | Stop::Interrupted { .. })) => {
                            state.stopped = Some(stop.clone());
                            true
                        }
                        _ => false,
                    };
                let (outcome, message, detail) = if let Some(reason) = state.subtest_todo.take() {
                    (Outcome::Todo { reason }, None, None)
                } else if ok || (stopping_file && stopped.is_none()) {
                    (Outcome::Passed, None, None)
                } else if let Some(stop) = stopped {
                    // Whatever the interrupted body raised, the point is that it ran
                    // out of time (or the run was interrupted).
                    let message = match &stop {
                        Stop::FileTimeout { limit, .. } => format!(
                            "timed out after {} (the file's limit)",
                            duration::show(*limit)
                        ),
                        other => other.to_string(),
                    };
                    let detail = (message.clone(), None);
                    (stop_outcome(&stop), Some(message), Some(detail))
                } else {
                    let full = error_message(&raised);
                    let message = strip_location(&full).to_string();
                    let outcome = ctx
                        .as_ref()
                        .map(|ctx| ctx.classify(&full))
                        .unwrap_or(Outcome::Failed);
                    (outcome, Some(message), Some((full, trace)))
                };
                let word = match &outcome {
                    Outcome::Passed => "ok".to_string(),
                    Outcome::Todo { reason: None } => "todo".to_string(),
                    Outcome::Todo {
                        reason: Some(reason),
                    } => format!("todo: {reason}"),
                    Outcome::Failed => "FAIL".to_string(),
                    other => format!("FAIL ({})", other.name()),
                };
                let mut entry = format!(
                    "test \"{name}\" ... {word} ({:.3}s)\n",
                    duration.as_secs_f64()
                );
                if let Some((full, trace)) = detail {
                    let trace = trace.map(|t| clean_traceback(&t)).unwrap_or_default();
                    for line in full.lines().chain(trace.lines()) {
                        entry.push_str(&format!("    {line}\n"));
                    }
                }
                log(lua, &entry);
                if let (Some(ctx), Outcome::Failed | Outcome::Error) = (&ctx, &outcome) {
                    let why = message.as_deref().unwrap_or("failed");
                    super::vm_shell::on_failure(ctx, &format!("sub-test '{name}' failed: {why}"));
                }
                let report = SubtestReport {
                    name,
                    outcome,
                    message,
                    duration,
                };
                if let Some(ctx) = &ctx {
                    ctx.run().events.send(Event::TestFinished {
                        file: ctx.name().to_string(),
                        attempt: ctx.attempt(),
                        test: report.clone(),
                    });
                }
                state.subtests.push(report);
                Ok(stopping_file)
            },
        )?,
    )?;

    let st = state.clone();
    hooks.set(
        "request_todo",
        lua.create_function(move |lua, reason: Value| {
            let reason = optional_reason(lua, reason)?;
            let mut state = st.borrow_mut();
            if state.current.is_some() {
                state.subtest_todo = Some(reason);
            } else {
                state.file_todo = Some(reason);
            }
            Ok(())
        })?,
    )?;

    let st = state.clone();
    hooks.set(
        "request_exit",
        lua.create_function(move |_, code: Value| {
            // Lua's os.exit: true or nothing is success, false is failure.
            let code = match code {
                Value::Nil | Value::Boolean(true) => 0,
                Value::Boolean(false) => 1,
                Value::Integer(n) => n,
                Value::Number(n) => n as i64,
                _ => 1,
            };
            st.borrow_mut().exit_code = Some(code);
            Ok(())
        })?,
    )?;
    Ok(())
}
