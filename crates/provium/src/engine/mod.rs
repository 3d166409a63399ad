//! The engine: one run, from the files to run to the events that report it.
//!
//! [`select`] turns discovered files and the run's filters into the files to run (the
//! part `provium test` and `provium list` share); [`run`] owns everything a run holds
//! — its directory, the resource pool, the fixture registry, the dispatch of files
//! onto threads — and ends it on every path: QEMUs killed, snapshots deleted, the
//! failure record updated. Front ends (the CLI) parse flags, call these and render
//! the events; they hold no run state of their own.

pub mod dispatch;
pub mod prepare;
pub mod select;
pub mod shell;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use crate::config::Config;
use crate::discover::TestFile;
use crate::pool::{Pool, PoolMode};
use crate::report::{Event, PartitionInfo, RunSummary};
use crate::runs::{self, RunContext, RunDir, RunEvents, RunsError, ShellAccess};
use crate::vm::host::HostCache;
pub use dispatch::DispatchOptions;
pub use select::{select, Filters, Partition, SelectError, Selection};

/// Everything one run needs.
pub struct RunPlan {
    pub files: Vec<TestFile>,
    pub config: Config,
    /// Where run directories and failure records live.
    pub runs_parent: PathBuf,
    pub pool: PoolMode,
    pub dispatch: DispatchOptions,
    /// `--partition`: the shard, and what the header says of it.
    pub partition: Option<(Partition, PartitionInfo)>,
    /// `--shell-on-failure` (the CLI checked it has a terminal and `-p 1`).
    pub shell_on_failure: bool,
}

/// Runs `plan`, sending every event to `emit`, and returns the summary (also sent as
/// [`Event::RunFinished`]). SIGINT and SIGTERM stop the run; whatever happens, no
/// QEMU outlives it and its snapshots are deleted.
pub fn run(plan: RunPlan, mut emit: impl FnMut(Event)) -> Result<RunSummary, RunsError> {
    // What earlier runs left: killed runs' directories, and more than the kept number.
    runs::sweep(&plan.runs_parent, runs::keep_runs());
    let run_dir = RunDir::create(&plan.runs_parent)?;
    let (events, events_rx) = mpsc::channel::<Event>();
    let events = RunEvents::new(events);
    let notices = events.clone();
    // `vm:shell()` needs the terminal to itself: a sequential run (`-p 1`, or one
    // file) on one.
    let shell = if plan.dispatch.sequential(plan.files.len()) && crate::tty::interactive() {
        ShellAccess::Terminal {
            on_failure: plan.shell_on_failure,
        }
    } else {
        ShellAccess::Refused
    };
    let ctx = Arc::new(
        RunContext::new(
            run_dir.clone(),
            plan.config,
            Pool::new(plan.pool),
            HostCache::new(Box::new(move |notice| notices.send(Event::Notice(notice)))),
            events,
        )
        .with_shell(shell),
    );

    emit(Event::RunStarted {
        total_files: plan.files.len(),
        pool: plan.pool,
        partition: plan.partition.as_ref().map(|(_, info)| info.clone()),
    });
    dispatch::install_signal_handlers();
    let done = dispatch::run(
        plan.files,
        Arc::clone(&ctx),
        plan.dispatch,
        &events_rx,
        &mut emit,
    );
    // Safety net: VM code kills its QEMUs at file end; nothing may outlive the run.
    crate::procs::kill_all();
    // Snapshots are large and only valid for this run; interrupted runs too.
    ctx.fixtures.close();
    for event in events_rx.try_iter() {
        emit(event);
    }
    let summary = done.summary;
    if let Some(signal) = summary.interrupted_by {
        emit(Event::Notice(format!(
            "provium: interrupted by {signal}; {} file(s) did not run",
            summary.not_run
        )));
    }
    emit(Event::RunFinished(summary.clone()));

    select::record_results(
        &done.finished,
        plan.partition.as_ref().map(|(p, _)| p),
        run_dir.path(),
        &plan.runs_parent,
    )?;
    run_dir.finish();
    Ok(summary)
}
