//! The engine: one run, from the files to run to the events that report it.
//!
//! [`select`] turns a discovery result and the run's filters into the files to run
//! (the part `provium test` and a listing share); [`run`] owns everything a run holds
//! — its directory, the resource pool, the fixture registry, the dispatch of files
//! onto threads — and ends it on every path: QEMUs killed, snapshots deleted, the
//! failure record written. Front ends (the CLI) parse flags, call these and render
//! the events; they hold no run state of their own.

pub mod dispatch;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use thiserror::Error;

use crate::config::Config;
use crate::discover::{self, Discovered, TestFile};
use crate::pool::{Pool, PoolMode};
use crate::report::{Event, RunSummary};
use crate::runs::{FailureRecord, RunContext, RunDir, RunsError};
use crate::vm::host::HostCache;
pub use dispatch::DispatchOptions;

/// A run that could not start or end properly (not a test failing).
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error("no .lua test files found under {}", .path.display())]
    NoFiles { path: PathBuf },
    #[error("no test files under {} match {}", .path.display(), filter_flags(.filters))]
    NoMatch { path: PathBuf, filters: Vec<String> },
}

fn filter_flags(filters: &[String]) -> String {
    filters
        .iter()
        .map(|f| format!("-f {f}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which files a run takes from its discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filters {
    /// `-f`: a file runs if its relative path contains any of these.
    pub patterns: Vec<String>,
    /// `--rerun-failed`: only what failed in the last run of the same root.
    pub rerun_failed: bool,
}

/// What a run will do with the files it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Files(Vec<TestFile>),
    /// `--rerun-failed` found nothing to rerun; the message says why (not an error).
    NothingToRerun(String),
}

/// The files of `found` that a run with `filters` runs, in sorted order. `shown` is
/// the path as the user gave it (for messages); `runs_parent` holds the failure
/// records `--rerun-failed` reads. Selecting nothing is an error, so a mistyped
/// filter cannot pass silently.
pub fn select(
    found: Discovered,
    shown: &Path,
    filters: &Filters,
    runs_parent: &Path,
) -> Result<Selection, EngineError> {
    let mut files = found.files;
    if filters.rerun_failed {
        let Some(record) = FailureRecord::load(runs_parent, &found.root_key)? else {
            return Ok(Selection::NothingToRerun(format!(
                "no previous run of {} recorded in {}; nothing to rerun",
                shown.display(),
                runs_parent.display()
            )));
        };
        if record.failed.is_empty() {
            return Ok(Selection::NothingToRerun(format!(
                "no failures in the last run of {}; nothing to rerun",
                shown.display()
            )));
        }
        files.retain(|f| record.failed.contains(&f.name));
        if files.is_empty() {
            return Ok(Selection::NothingToRerun(format!(
                "the files that failed in the last run of {} no longer exist; nothing to rerun",
                shown.display()
            )));
        }
    }
    let files = discover::filter(files, &filters.patterns);
    if files.is_empty() {
        return Err(if filters.patterns.is_empty() {
            EngineError::NoFiles {
                path: shown.to_path_buf(),
            }
        } else {
            EngineError::NoMatch {
                path: shown.to_path_buf(),
                filters: filters.patterns.clone(),
            }
        });
    }
    Ok(Selection::Files(files))
}

/// Everything one run needs.
pub struct RunPlan {
    pub files: Vec<TestFile>,
    /// The canonical `<path>` argument: the failure record's key.
    pub root_key: PathBuf,
    /// The canonical test root directory (`require` searches it; fixtures stop there).
    pub test_root: PathBuf,
    pub config: Config,
    /// Where run directories and failure records live.
    pub runs_parent: PathBuf,
    pub pool: PoolMode,
    pub dispatch: DispatchOptions,
}

/// Runs `plan`, sending every event to `emit`, and returns the summary (also sent as
/// [`Event::RunFinished`]). SIGINT and SIGTERM stop the run; whatever happens, no
/// QEMU outlives it and its snapshots are deleted.
pub fn run(plan: RunPlan, mut emit: impl FnMut(Event)) -> Result<RunSummary, EngineError> {
    let run_dir = RunDir::create(&plan.runs_parent)?;
    let (notices, notices_rx) = mpsc::channel::<String>();
    let notify = move |notice: String| {
        let _ = notices.send(notice);
    };
    let ctx = Arc::new(RunContext::new(
        run_dir.clone(),
        plan.test_root,
        plan.config,
        Pool::new(plan.pool),
        HostCache::new(Box::new(notify)),
    ));

    dispatch::install_signal_handlers();
    let summary = dispatch::run(
        plan.files,
        Arc::clone(&ctx),
        plan.dispatch,
        &notices_rx,
        &mut emit,
    );
    // Safety net: VM code kills its QEMUs at file end; nothing may outlive the run.
    crate::procs::kill_all();
    // Snapshots are large and only valid for this run; interrupted runs too.
    ctx.fixtures.close();
    for notice in notices_rx.try_iter() {
        emit(Event::Notice(notice));
    }
    if let Some(signal) = summary.interrupted_by {
        emit(Event::Notice(format!(
            "provium: interrupted by {signal}; stopped {} file(s) before they ran or finished",
            summary.not_run
        )));
    }

    let failed: Vec<String> = summary.failed_logs.iter().map(|f| f.name.clone()).collect();
    let record = FailureRecord::new(plan.root_key, run_dir.path().to_path_buf(), failed);
    record.save(&plan.runs_parent)?;
    run_dir.remove_if_empty();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered(root: &Path, names: &[&str]) -> Discovered {
        Discovered {
            root_key: root.to_path_buf(),
            root_dir: root.to_path_buf(),
            files: names
                .iter()
                .map(|n| TestFile {
                    name: n.to_string(),
                    path: root.join(n),
                })
                .collect(),
        }
    }

    fn names(selection: Selection) -> Vec<String> {
        match selection {
            Selection::Files(files) => files.into_iter().map(|f| f.name).collect(),
            Selection::NothingToRerun(why) => panic!("nothing to rerun: {why}"),
        }
    }

    #[test]
    fn filters_and_reruns_select_from_the_discovery() {
        let runs = tempfile::tempdir().unwrap();
        let root = Path::new("/t");
        let all = || discovered(root, &["a.lua", "b.lua", "c.lua"]);
        let filters = Filters {
            patterns: vec!["b".into(), "c".into()],
            rerun_failed: false,
        };
        assert_eq!(
            names(select(all(), root, &filters, runs.path()).unwrap()),
            ["b.lua", "c.lua"]
        );
        let rerun = Filters {
            patterns: Vec::new(),
            rerun_failed: true,
        };
        assert!(matches!(
            select(all(), root, &rerun, runs.path()).unwrap(),
            Selection::NothingToRerun(why) if why.starts_with("no previous run of /t recorded")
        ));
        FailureRecord::new(
            root.into(),
            "/r".into(),
            vec!["c.lua".into(), "gone.lua".into()],
        )
        .save(runs.path())
        .unwrap();
        assert_eq!(
            names(select(all(), root, &rerun, runs.path()).unwrap()),
            ["c.lua"]
        );
        let none = Filters {
            patterns: vec!["zzz".into()],
            rerun_failed: false,
        };
        assert_eq!(
            select(all(), root, &none, runs.path())
                .unwrap_err()
                .to_string(),
            "no test files under /t match -f zzz"
        );
        assert_eq!(
            select(
                discovered(root, &[]),
                root,
                &Filters::default(),
                runs.path()
            )
            .unwrap_err()
            .to_string(),
            "no .lua test files found under /t"
        );
    }
}
