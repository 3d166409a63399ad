//! The Lua userdata behind VM handles and workers, the error every VM method raises,
//! and the small conversions the method bindings (`vm_api`, `vm_kernel`) share.

use std::cell::Cell;
use std::rc::Rc;

use mlua::{Lua, MultiValue, Value};
use thiserror::Error;

use super::options::OptionError;
use super::raise;
use super::vm_args::ArgError;
use crate::vm::accel::AccelError;
use crate::vm::client::{AgentClient, ClientError, Worker};
use crate::vm::fleet::{HandleError, VmHandle};
use crate::vm::host::ProfileError;
use crate::vm::StartError;

/// A VM method: the handle, then the call's other arguments.
pub(super) type Method = fn(&Lua, &LuaVm, &[Value]) -> mlua::Result<MultiValue>;

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
    #[error("kernel_release: profile '{profile}': {source}")]
    Kernel {
        profile: String,
        source: crate::vm::kernel::KernelError,
    },
    #[error("{subject}: {op} needs a terminal and -p 1 (it waits for a person at the terminal: run the file with -p 1 from one)")]
    ShellRefused { subject: String, op: &'static str },
    #[error("{subject}: shell takes no arguments")]
    ShellArgs { subject: String },
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
            VmApiError::Profile(
                ProfileError::Default(_)
                | ProfileError::Build(_)
                | ProfileError::MissingKernel { .. },
            ) => true,
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

pub(super) fn arg(values: &[Value], index: usize) -> &Value {
    values.get(index).unwrap_or(&Value::Nil)
}

pub(super) fn returns(values: impl IntoIterator<Item = Value>) -> MultiValue {
    values.into_iter().collect()
}

pub(super) fn lua_bytes(lua: &Lua, bytes: &[u8]) -> mlua::Result<Value> {
    lua.create_string(bytes).map(Value::String)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::BootError;
    use std::time::Duration;

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
            load: None,
            console_log: "/r/vm1/console.log".into(),
            console_tail: String::new(),
        })));
        assert!(boot.is_infrastructure());
        assert!(!failed.is_infrastructure());
    }
}
