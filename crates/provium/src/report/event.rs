//! The events the runner emits and the reporter consumes: the contract between them.
//!
//! Everything the terminal shows is derived from these values alone, so a reporter can
//! be tested without running Lua and the runner can be tested without a terminal.

use std::path::PathBuf;
use std::time::Duration;

use crate::pool::PoolMode;

/// One thing that happened during a run, in the order the reporters see it.
#[derive(Debug, Clone)]
pub enum Event {
    /// Before any file starts.
    RunStarted {
        total_files: usize,
        pool: PoolMode,
        /// `--partition`: which shard this run is, when it is one.
        partition: Option<PartitionInfo>,
    },
    /// A file (or another attempt at it, with `--retries`) was handed to a thread.
    FileStarted { name: String, attempt: u32 },
    /// A VM finished booting (or resuming from a fixture) for a file.
    VmBooted(VmBooted),
    /// A sub-test of a running file ended (in attempt `attempt` of the file).
    TestFinished {
        file: String,
        attempt: u32,
        test: SubtestReport,
    },
    /// An attempt at a file ended (however it ended). The terminal renders the last
    /// attempt as one whole block; machine reports record every attempt.
    FileFinished(FileReport),
    /// Something the user should know that is not a test result (the KVM fallback,
    /// why a run stopped); shown on stderr, never glued to the live status line.
    Notice(String),
    /// Time passed with nothing else to report; lets the live status line tick.
    Tick,
    /// After the last file ended or the run was cut short.
    RunFinished(RunSummary),
}

/// How a test file or one sub-test ended.
///
/// `Failed` and `Error` are kept apart all the way to the reporters: "the test found a
/// bug" and "the VM broke under the test" call for different people. The terminal
/// report prints both as `FAIL` (the seed's format); the message of an `Error` says
/// what broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// An assertion failed, or test code raised.
    Failed,
    /// The infrastructure broke: a boot failed, QEMU died, the kernel panicked, the
    /// agent is gone, the pool refused a VM, a snapshot or fixture failed.
    Error,
    /// The file or sub-test ran out of its time.
    TimedOut,
    /// The run was interrupted (SIGINT, SIGTERM) while the file ran.
    Interrupted,
    /// `todo()` was called: never a failure, counted with the passed files.
    Todo {
        reason: Option<String>,
    },
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::Error | Outcome::TimedOut | Outcome::Interrupted
        )
    }

    /// The outcome's name in machine-readable reports and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::TimedOut => "timed-out",
            Outcome::Interrupted => "interrupted",
            Outcome::Todo { .. } => "todo",
        }
    }

    /// Every outcome name, in the order counts are reported.
    pub const NAMES: [&'static str; 6] = [
        "passed",
        "failed",
        "error",
        "timed-out",
        "interrupted",
        "todo",
    ];
}

/// `--partition`: the shard a run is, and how many of the selected files it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// As given: `count:2/4` or `hash:1/3`.
    pub spec: String,
    /// Files in this shard.
    pub selected: usize,
    /// Files before partitioning (after `-f`).
    pub total: usize,
}

/// A VM that booted or resumed for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmBooted {
    pub file: String,
    /// The VM's name (`a.lua#1`, or `a.lua@fixture#3` when resumed).
    pub vm: String,
    pub profile: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// From the request to a ready agent (resumes included).
    pub boot: Duration,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The fixture it was resumed from, if it was.
    pub fixture: Option<String>,
}

/// The outcome of one test file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Path relative to the test root (for a single-file argument, its file name).
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
    pub subtests: Vec<SubtestReport>,
    /// The script's own error outside any `test()` block, as shown to the user
    /// (location prefix stripped, except for syntax errors whose location is the point).
    pub file_error: Option<String>,
    /// The last lines of the console of the VM booted last, when the file booted any.
    pub console_tail: Option<Vec<String>>,
    /// Where the file's log is kept; `None` for passing files (their logs are deleted).
    pub log_path: Option<PathBuf>,
    /// 1 for the first run of the file; more with `--retries`.
    pub attempt: u32,
    /// Another attempt follows this one (it failed and retries remain).
    pub retrying: bool,
}

impl FileReport {
    /// Passed, but only after failed attempts.
    pub fn is_flaky(&self) -> bool {
        self.attempt > 1 && !self.outcome.is_failure()
    }
}

/// One `test(name, fn)` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtestReport {
    pub name: String,
    pub outcome: Outcome,
    /// For a failure: the raised value without its `file:line:` prefix.
    pub message: Option<String>,
    pub duration: Duration,
}

/// What the summary line and the `Failed test logs:` section show.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Passed and todo files (flaky ones included).
    pub passed: usize,
    pub failed: usize,
    /// Files that passed only on a later attempt (`--retries`).
    pub flaky: usize,
    /// Final outcomes by name (`passed`, `failed`, `error`, …), for machine reports.
    pub outcomes: std::collections::BTreeMap<&'static str, usize>,
    pub duration: Duration,
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
