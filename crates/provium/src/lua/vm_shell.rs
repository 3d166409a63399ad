//! `vm:shell()` / `worker:shell()`: a person at the terminal takes over a VM, with
//! the test paused; and `--shell-on-failure`, which does the same in the file's last
//! booted VM when something fails. A shell needs the terminal to itself, so it is
//! refused at once anywhere else (CI, `-p 2`): one left in a file can never hang a
//! run.

use mlua::{Lua, MultiValue, Value};

use super::vm_handle::{fail, LuaVm, VmApiError};
use super::FileContext;
use crate::runs::ShellAccess;
use crate::vm::fleet::VmHandle;
use crate::vm::shell::{self as guest_shell, ShellMode};

/// `vm:shell()`: returns the shell's exit status.
pub(super) fn shell(lua: &Lua, this: &LuaVm, a: &[Value]) -> mlua::Result<MultiValue> {
    if !a.is_empty() {
        return Err(fail(
            lua,
            VmApiError::ShellArgs {
                subject: this.to_string(),
            },
        ));
    }
    let ctx = FileContext::of(lua)?;
    let op = if this.worker.is_some() {
        "worker:shell()"
    } else {
        "vm:shell()"
    };
    let mode = match &ctx.run().shell {
        ShellAccess::Refused => {
            return Err(fail(
                lua,
                VmApiError::ShellRefused {
                    subject: this.to_string(),
                    op,
                },
            ))
        }
        ShellAccess::Terminal { .. } => ShellMode::Terminal,
        ShellAccess::Cli { pty: true, .. } => ShellMode::Terminal,
        ShellAccess::Cli {
            command,
            pty: false,
        } => ShellMode::Pipes {
            command: command.clone(),
        },
    };
    let banner = match (&ctx.run().shell, &mode) {
        (ShellAccess::Terminal { .. }, _) => Some(format!(
            "provium: {this}: shell (the test is paused; exit the shell to resume it)"
        )),
        _ => None,
    };
    let status = {
        // The person's time is not the test's.
        let _paused = ctx.cancel().pause();
        this.with_client("shell", |client| {
            guest_shell::attach(client, mode, banner.as_deref())
        })
        .map_err(|e| fail(lua, e))?
    };
    *ctx.run()
        .shell_status
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(status);
    Ok(std::iter::once(Value::Integer(i64::from(status))).collect())
}

/// `--shell-on-failure`: after `what` failed, a shell in the file's last booted VM
/// still running, before anything is torn down. Nothing happens without the flag or
/// without a running VM; a shell that cannot attach is noted in the log, never
/// raised (the failure being reported is the point).
pub(crate) fn on_failure(ctx: &FileContext, what: &str) {
    if !matches!(ctx.run().shell, ShellAccess::Terminal { on_failure: true }) {
        return;
    }
    let Some(handle) = ctx.fleet().last_running() else {
        return;
    };
    let banner = format!(
        "provium: {what}; shell in VM {} (--shell-on-failure; exit the shell to go on)",
        handle.name()
    );
    let _paused = ctx.cancel().pause();
    if let Err(e) = attach_to(&handle, &banner) {
        ctx.log(&format!("--shell-on-failure: {e}\n"));
    }
}

fn attach_to(handle: &VmHandle, banner: &str) -> Result<i32, VmApiError> {
    let client = handle.client("shell")?;
    Ok(handle.observe(guest_shell::attach(
        &client,
        ShellMode::Terminal,
        Some(banner),
    ))?)
}
