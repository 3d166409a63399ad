//! `provium shell`: one VM and a shell in it, as a run of one generated Lua file — so
//! the boot, a fixture's resume, the pool, the log, the signals and the cleanup are
//! exactly a test file's. The file boots (or resumes), calls `vm:shell()`, and powers
//! the VM off; the shell's exit status becomes provium's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::dispatch;
use crate::cancel::Cancel;
use crate::config::Config;
use crate::discover::TestFile;
use crate::lua::file::{run_file_with, LuaFile};
use crate::lua::PROVIUM_MODULES;
use crate::pool::{Pool, PoolMode};
use crate::report::Outcome;
use crate::runs::{self, RunContext, RunDir, RunEvents, RunsError, ShellAccess};
use crate::vm::host::HostCache;

/// How the shell's VM comes to be.
#[derive(Debug, Clone)]
pub enum Start {
    /// Resume `fixtures/NAME.lua`'s snapshot (found from the current directory).
    Fixture(String),
    /// Boot a VM of `profile` (`default` when `None`).
    Boot {
        profile: Option<String>,
        memory: Option<String>,
        cpus: Option<u32>,
        /// Guest path, host path.
        files: Vec<(String, String)>,
        gdb: bool,
    },
}

/// Everything `provium shell` needs.
#[derive(Debug)]
pub struct ShellPlan {
    pub config: Config,
    /// Where fixtures are searched from (up to the project root).
    pub cwd: PathBuf,
    pub runs_parent: PathBuf,
    pub start: Start,
    /// `-c CMD`: run it without a pty.
    pub command: Option<String>,
}

#[derive(Debug, Error)]
pub enum ShellError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// The VM did not come up, or broke before the shell ended.
    #[error("{message}{}", log.as_ref().map(|l| format!("\nlog: {}", l.display())).unwrap_or_default())]
    Failed {
        message: String,
        log: Option<PathBuf>,
    },
}

/// How often the signal watcher looks for SIGINT/SIGTERM/SIGHUP.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs the shell; returns its exit status (128+N when a signal ended it).
pub fn run(plan: ShellPlan) -> Result<i32, ShellError> {
    runs::sweep(&plan.runs_parent, runs::keep_runs());
    let run_dir = RunDir::create(&plan.runs_parent)?;
    // Notices (the KVM probe, the gdb stub's address) go straight to stderr.
    let (events, events_rx) = std::sync::mpsc::channel();
    let pty = plan.command.is_none() && crate::tty::interactive();
    let ctx = Arc::new(
        RunContext::new(
            run_dir.clone(),
            plan.config,
            Pool::new(PoolMode::Auto),
            HostCache::new(Box::new(|notice| eprintln!("{notice}"))),
            RunEvents::new(events),
        )
        .with_shell(ShellAccess::Cli {
            command: plan.command,
            pty,
        }),
    );
    drop(events_rx);

    let source = script(&plan.start);
    let root = std::fs::canonicalize(&plan.cwd).unwrap_or(plan.cwd);
    let file = TestFile::new("shell", root.join("provium-shell.lua"), &root);
    let cancel = Cancel::for_file(None);
    dispatch::install_signal_handlers();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let cancel = cancel.clone();
        let watching = Arc::clone(&watching);
        std::thread::spawn(move || {
            while watching.load(Ordering::Acquire) {
                if let Some(signal) = dispatch::pending_signal() {
                    cancel.interrupt(signal);
                    return;
                }
                std::thread::sleep(SIGNAL_POLL);
            }
        })
    };
    let report = run_file_with(
        Arc::clone(&ctx),
        LuaFile {
            file: &file,
            index: 0,
            attempt: 1,
            cancel,
            source: Some(&source),
        },
        PROVIUM_MODULES,
    );
    watching.store(false, Ordering::Release);
    let _ = watcher.join();
    crate::procs::kill_all();
    ctx.fixtures.close();
    let status = *ctx.shell_status.lock().unwrap_or_else(|e| e.into_inner());
    let result = match (&report.outcome, status) {
        // The shell ended; powering off after it is not the user's business unless
        // it failed (then the log says how).
        (Outcome::Passed, Some(status)) => Ok(status),
        (Outcome::Interrupted, _) => Ok(128 + signal_number(report.file_error.as_deref())),
        (_, _) => Err(ShellError::Failed {
            message: report
                .file_error
                .clone()
                .unwrap_or_else(|| "the shell's VM failed".to_string()),
            log: report.log_path.clone(),
        }),
    };
    run_dir.finish();
    result
}

/// 128 + N for "interrupted by SIGN…", as a shell reports a job a signal ended.
fn signal_number(message: Option<&str>) -> i32 {
    let text = message.unwrap_or_default();
    if text.contains("SIGTERM") {
        libc::SIGTERM
    } else if text.contains("SIGHUP") {
        libc::SIGHUP
    } else {
        libc::SIGINT
    }
}

/// The generated file: boot or resume, the shell, a clean power-off.
fn script(start: &Start) -> String {
    let mut lua = String::from("-- generated by provium shell\n");
    match start {
        Start::Fixture(name) => {
            lua.push_str(&format!("local vm = provium.fixture({})\n", quote(name)));
        }
        Start::Boot {
            profile,
            memory,
            cpus,
            files,
            gdb,
        } => {
            let profile = profile.as_deref().unwrap_or("default");
            lua.push_str(&format!("local vm = provium.create({})\n", quote(profile)));
            let mut options = Vec::new();
            if let Some(memory) = memory {
                options.push(format!("memory = {}", quote(memory)));
            }
            if let Some(cpus) = cpus {
                options.push(format!("cpus = {cpus}"));
            }
            if !files.is_empty() {
                let entries: Vec<String> = files
                    .iter()
                    .map(|(guest, host)| format!("[{}] = {}", quote(guest), quote(host)))
                    .collect();
                options.push(format!("files = {{ {} }}", entries.join(", ")));
            }
            if *gdb {
                options.push("gdb = true".to_string());
            }
            lua.push_str(&format!("vm:boot({{ {} }})\n", options.join(", ")));
        }
    }
    lua.push_str("vm:shell()\nvm:shutdown()\n");
    lua
}

/// A Lua string literal holding `text` exactly (any byte).
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_survive_lua() {
        let lua = mlua::Lua::new();
        for text in ["plain", "a \"quote\" and \\ back", "new\nline\0nul", "ü ✓"] {
            let back: String = lua.load(quote(text)).eval().unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn the_script_boots_with_the_options_given() {
        let start = Start::Boot {
            profile: Some("mine".into()),
            memory: Some("2G".into()),
            cpus: Some(2),
            files: vec![("/root/m.ko".into(), "out/m.ko".into())],
            gdb: true,
        };
        assert_eq!(
            script(&start),
            "-- generated by provium shell\n\
             local vm = provium.create(\"mine\")\n\
             vm:boot({ memory = \"2G\", cpus = 2, files = { [\"/root/m.ko\"] = \"out/m.ko\" }, gdb = true })\n\
             vm:shell()\nvm:shutdown()\n"
        );
        assert_eq!(
            script(&Start::Fixture("kacs".into())),
            "-- generated by provium shell\nlocal vm = provium.fixture(\"kacs\")\n\
             vm:shell()\nvm:shutdown()\n"
        );
    }
}
