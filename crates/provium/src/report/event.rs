//! The events the runner emits and the reporter consumes: the contract between them.
//!
//! Everything the terminal shows is derived from these values alone, so a reporter can
//! be tested without running Lua and the runner can be tested without a terminal.

use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::pool::PoolMode;

/// One thing that happened during a run, in the order the reporter must render it.
#[derive(Debug, Clone)]
pub enum Event {
    /// Before any file starts.
    RunStarted { total_files: usize, pool: PoolMode },
    /// A file was handed to a worker thread.
    FileStarted { name: String },
    /// A file ended (passed, failed, todo); rendered as one whole block.
    FileFinished(FileReport),
    /// Time passed with nothing else to report; lets the live status line tick.
    Tick,
    /// After the last file ended or the run was cut short.
    RunFinished(RunSummary),
}

/// The outcome of one test file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Path relative to the test root (for a single-file argument, its file name).
    pub name: String,
    pub status: FileStatus,
    pub duration: Duration,
    pub subtests: Vec<SubtestReport>,
    /// The script's own error outside any `test()` block, as shown to the user
    /// (location prefix stripped, except for syntax errors whose location is the point).
    pub file_error: Option<String>,
    /// The last lines of the console of the VM booted last, when the file booted any.
    pub console_tail: Option<Vec<String>>,
    /// Where the file's log is kept; `None` for passing files (their logs are deleted).
    pub log_path: Option<PathBuf>,
}

/// How a file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    Passed,
    Failed,
    /// `todo()` called at file level: never fails, counted with the passed files.
    Todo {
        reason: Option<String>,
    },
}

impl FileStatus {
    pub fn is_failure(&self) -> bool {
        matches!(self, FileStatus::Failed)
    }
}

/// One `test(name, fn)` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtestReport {
    pub name: String,
    pub status: SubtestStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubtestStatus {
    Passed,
    /// `message` is the raised value without its `file:line:` prefix.
    Failed {
        message: String,
    },
    Todo {
        reason: Option<String>,
    },
}

/// What the summary line and the `Failed test logs:` section show.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Passed and todo files.
    pub passed: usize,
    pub failed: usize,
    /// Files never started (`--fail-fast`) or stopped by an interrupt.
    pub not_run: usize,
    /// Failed files and their logs, sorted by name.
    pub failed_logs: Vec<FailedLog>,
    /// The signal that cut the run short, if one did.
    pub interrupted_by: Option<&'static str>,
}

impl RunSummary {
    /// A run succeeds only when every selected file ran and none failed.
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.not_run == 0 && self.interrupted_by.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLog {
    pub name: String,
    pub log_path: Option<PathBuf>,
}
