//! File dispatch: runs a run's test files on worker threads.
//!
//! The dispatcher owns all run state; each file runs on its own OS thread with its own
//! Lua state and reports back one message when it ends. Files are launched in sorted
//! order, at most `jobs` at once, and reported in completion order.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::discover::TestFile;
use crate::report::{Event, FailedLog, FileReport, Outcome, RunSummary};
use crate::runs::RunContext;

/// How often the dispatcher wakes with nothing to do: the status line ticks and a
/// pending signal is noticed within this delay.
const TICK: Duration = Duration::from_millis(100);
/// Lua itself needs little C stack, but VM bindings and deep user recursion through
/// Rust callbacks should not overflow the default 2 MiB.
const WORKER_STACK: usize = 16 * 1024 * 1024;

/// How many files may run at once, and whether to stop after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchOptions {
    /// `None`: no file limit (the VM pool gates instead).
    pub jobs: Option<usize>,
    pub fail_fast: bool,
}

/// Default `-p`: half the CPUs, at least 2.
pub fn default_jobs() -> usize {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).max(2)
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING_SIGNAL.store(signal, Ordering::SeqCst);
    // A second Ctrl-C while provium is stopping gets the default action: die now.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Routes SIGINT and SIGTERM to the dispatcher, which stops the run, kills every
/// QEMU and prints the summary of what finished.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and resets the disposition, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn pending_signal() -> Option<&'static str> {
    match PENDING_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// Runs `files` (already in sorted order) and reports every event to `emit`, the
/// run's `notices` among them. Returns the summary also sent as
/// [`Event::RunFinished`].
pub fn run(
    files: Vec<TestFile>,
    ctx: Arc<RunContext>,
    options: DispatchOptions,
    notices: &Receiver<String>,
    emit: &mut impl FnMut(Event),
) -> RunSummary {
    let total = files.len();
    let limit = options.jobs.unwrap_or(usize::MAX).max(1);
    emit(Event::RunStarted {
        total_files: total,
        pool: ctx.pool.mode(),
    });

    let (sender, receiver) = mpsc::channel::<FileReport>();
    let mut queue = files.into_iter().enumerate();
    let mut running = 0usize;
    let mut finished = 0usize;
    let mut launching = true;
    let mut summary = RunSummary::default();

    loop {
        if let Some(signal) = pending_signal() {
            summary.interrupted_by = Some(signal);
            crate::procs::kill_all();
            break;
        }
        while launching && running < limit {
            let Some((index, file)) = queue.next() else {
                launching = false;
                break;
            };
            emit(Event::FileStarted {
                name: file.name.clone(),
            });
            running += 1;
            if let Err(report) = spawn_file(&ctx, file, index, sender.clone()) {
                // Reported through the channel path below so tallies stay in one place.
                let _ = sender.send(*report);
            }
        }
        for notice in notices.try_iter() {
            emit(Event::Notice(notice));
        }
        if running == 0 {
            break;
        }
        match receiver.recv_timeout(TICK) {
            Ok(report) => {
                running -= 1;
                finished += 1;
                if report.outcome.is_failure() {
                    summary.failed += 1;
                    summary.failed_logs.push(FailedLog {
                        name: report.name.clone(),
                        log_path: report.log_path.clone(),
                    });
                    if options.fail_fast {
                        launching = false;
                    }
                } else {
                    summary.passed += 1;
                }
                emit(Event::FileFinished(report));
            }
            Err(RecvTimeoutError::Timeout) => emit(Event::Tick),
            // Every worker holds a sender until it has reported, and so do we.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }

    summary.not_run = total - finished;
    summary
        .failed_logs
        .sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    emit(Event::RunFinished(summary.clone()));
    summary
}

/// Starts `file` on its own thread; on failure to spawn, returns its failed report.
fn spawn_file(
    ctx: &Arc<RunContext>,
    file: TestFile,
    index: usize,
    sender: mpsc::Sender<FileReport>,
) -> Result<(), Box<FileReport>> {
    let ctx = Arc::clone(ctx);
    let name = file.name.clone();
    let spawned = thread::Builder::new()
        .name(format!("lua {name}"))
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let started = Instant::now();
            let report = catch_unwind(AssertUnwindSafe(|| {
                crate::lua::run_file(Arc::clone(&ctx), &file, index)
            }))
            .unwrap_or_else(|panic| panic_report(&ctx, &file, started, panic.as_ref()));
            let _ = sender.send(report);
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => Err(Box::new(FileReport {
            name,
            outcome: Outcome::Error,
            duration: Duration::ZERO,
            subtests: Vec::new(),
            file_error: Some(format!("cannot start a thread for this file: {e}")),
            console_tail: None,
            log_path: None,
        })),
    }
}

/// A panic while running a file fails that file, not the run.
fn panic_report(
    ctx: &RunContext,
    file: &TestFile,
    started: Instant,
    panic: &(dyn Any + Send),
) -> FileReport {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let message = format!("internal error: provium panicked while running this file: {what}");
    let log_path = ctx.run_dir.log_path(&file.name);
    let kept = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .and_then(|mut log| {
            std::io::Write::write_all(&mut log, format!("\n{message}\n").as_bytes())
        })
        .is_ok();
    FileReport {
        name: file.name.clone(),
        outcome: Outcome::Error,
        duration: started.elapsed(),
        subtests: Vec::new(),
        file_error: Some(message),
        console_tail: None,
        log_path: kept.then_some(log_path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolMode};
    use crate::runs::RunDir;
    use std::path::PathBuf;

    fn context(parent: &std::path::Path) -> RunContext {
        RunContext::new(
            RunDir::create(parent).unwrap(),
            parent.to_path_buf(),
            crate::config::Config::empty(parent),
            Pool::new(PoolMode::Auto),
            Default::default(),
        )
    }

    #[test]
    fn a_panic_fails_only_its_file_and_keeps_its_log() {
        let parent = tempfile::tempdir().unwrap();
        let ctx = context(parent.path());
        let file = TestFile {
            name: "x.lua".into(),
            path: PathBuf::from("x.lua"),
        };
        std::fs::write(ctx.run_dir.log_path("x.lua"), "partial\n").unwrap();
        let payload: Box<dyn Any + Send> = Box::new("boom");
        let report = panic_report(&ctx, &file, Instant::now(), payload.as_ref());
        assert_eq!(report.outcome, Outcome::Error);
        assert_eq!(
            report.file_error.as_deref(),
            Some("internal error: provium panicked while running this file: boom")
        );
        let log = std::fs::read_to_string(report.log_path.unwrap()).unwrap();
        assert!(
            log.starts_with("partial\n") && log.contains("panicked"),
            "{log}"
        );
    }

    #[test]
    fn fail_fast_stops_launching_and_counts_the_rest() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("t");
        std::fs::create_dir(&root).unwrap();
        let mut files = Vec::new();
        for (name, body) in [("a.lua", "error('no')"), ("b.lua", ""), ("c.lua", "")] {
            std::fs::write(root.join(name), body).unwrap();
            files.push(TestFile {
                name: name.into(),
                path: root.join(name),
            });
        }
        let ctx = Arc::new(context(parent.path()));
        let mut events = Vec::new();
        let options = DispatchOptions {
            jobs: Some(1),
            fail_fast: true,
        };
        let (_notices, notices_rx) = mpsc::channel();
        let summary = run(files, ctx, options, &notices_rx, &mut |e| events.push(e));
        assert_eq!((summary.passed, summary.failed, summary.not_run), (0, 1, 2));
        let started = events
            .iter()
            .filter(|e| matches!(e, Event::FileStarted { .. }))
            .count();
        assert_eq!(started, 1);
        assert!(matches!(
            events.first(),
            Some(Event::RunStarted { total_files: 3, .. })
        ));
        assert!(matches!(events.last(), Some(Event::RunFinished(_))));
    }
}
