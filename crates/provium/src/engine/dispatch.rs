//! File dispatch: runs a run's test files on worker threads.
//!
//! The dispatcher owns all run state; each file runs on its own OS thread with its own
//! Lua state and reports back one message when it ends. Files are launched in sorted
//! order, at most `jobs` at once, and reported in completion order. It is also the
//! run's watchdog: it interrupts running files on SIGINT/SIGTERM, retries failing
//! files (`--retries`), and a file that does not come back after its time ran out (or
//! after an interrupt) is reported for it, with its VMs killed — a run always ends.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cancel::{Cancel, Stop};
use crate::discover::TestFile;
use crate::report::{Event, FailedLog, FileReport, Outcome, RunSummary};
use crate::runs::RunContext;

/// How often the dispatcher wakes with nothing to do: the status line ticks and a
/// pending signal is noticed within this delay.
const TICK: Duration = Duration::from_millis(100);
/// Lua itself needs little C stack, but VM bindings and deep user recursion through
/// Rust callbacks should not overflow the default 2 MiB.
const WORKER_STACK: usize = 16 * 1024 * 1024;
/// How long a file whose time ran out may take to stop by itself (every wait checks
/// within about a second) before the dispatcher kills its VMs and reports it.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How many files may run at once, whether to stop after a failure, how often to
/// retry a failing file, and each file's time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchOptions {
    /// `None`: no file limit (the VM pool gates instead).
    pub jobs: Option<usize>,
    pub fail_fast: bool,
    /// `--retries N`: a file that does not pass runs again, up to N more times.
    pub retries: u32,
    /// Each file's time limit unless it sets its own (`None`: none).
    pub timeout: Option<Duration>,
}

impl DispatchOptions {
    /// Whether a run of `files` files runs one file at a time (`-p 1`, or a single
    /// file), so a file may take the terminal (`vm:shell()`).
    pub fn sequential(&self, files: usize) -> bool {
        self.jobs == Some(1) || files <= 1
    }
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

/// Routes SIGINT, SIGTERM and SIGHUP (the terminal closed) to the dispatcher, which
/// stops the run, kills every QEMU and prints the summary of what finished.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and resets the disposition, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

/// The stopping signal received since the handlers were installed, if any.
pub fn pending_signal() -> Option<&'static str> {
    match PENDING_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

/// What the dispatch did: the summary, and every file that ran to an end with
/// whether it failed (the failure record is updated from these).
#[derive(Debug, Default)]
pub struct Dispatched {
    pub summary: RunSummary,
    pub finished: Vec<(TestFile, bool)>,
}

/// One attempt at a file, from launch to its report.
struct Attempt {
    index: usize,
    file: TestFile,
    attempt: u32,
}

struct Running {
    work: Attempt,
    cancel: Cancel,
}

/// Runs `files` (already in sorted order), sending every event to `emit`, the run's
/// own `events` (notices, boots, sub-tests) among them.
pub fn run(
    files: Vec<TestFile>,
    ctx: Arc<RunContext>,
    options: DispatchOptions,
    events: &Receiver<Event>,
    emit: &mut impl FnMut(Event),
) -> Dispatched {
    let started = Instant::now();
    let total = files.len();
    let limit = options.jobs.unwrap_or(usize::MAX).max(1);
    let (sender, receiver) = mpsc::channel::<(u64, FileReport)>();
    let mut queue: VecDeque<Attempt> = files
        .into_iter()
        .enumerate()
        .map(|(index, file)| Attempt {
            index,
            file,
            attempt: 1,
        })
        .collect();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut next_slot = 0u64;
    let mut launching = true;
    let mut interrupted: Option<(&'static str, Instant)> = None;
    let mut done = Dispatched::default();

    loop {
        if let (Some(signal), None) = (pending_signal(), interrupted) {
            interrupted = Some((signal, Instant::now()));
            done.summary.interrupted_by = Some(signal);
            launching = false;
            for r in running.values() {
                r.cancel.interrupt(signal);
            }
        }
        if ctx.stop_requested() {
            launching = false;
        }
        while launching && running.len() < limit {
            let Some(work) = queue.pop_front() else {
                break;
            };
            emit(Event::FileStarted {
                name: work.file.name.clone(),
                attempt: work.attempt,
            });
            let cancel = Cancel::for_file(options.timeout);
            next_slot += 1;
            match spawn_file(&ctx, &work, cancel.clone(), next_slot, sender.clone()) {
                Ok(()) => {
                    running.insert(next_slot, Running { work, cancel });
                }
                Err(report) => {
                    let outcome = finish(*report, work, &options, &mut done, emit);
                    requeue(outcome, &mut queue, &mut launching, &options);
                }
            }
        }
        for event in events.try_iter() {
            emit(event);
        }
        if running.is_empty() && (queue.is_empty() || !launching) {
            break;
        }
        match receiver.recv_timeout(TICK) {
            Ok((slot, report)) => {
                // What the file sent while it ran (its sub-tests, its boots) comes
                // before its end.
                for event in events.try_iter() {
                    emit(event);
                }
                // A file reported for it (abandoned) may still come back: ignored.
                if let Some(r) = running.remove(&slot) {
                    let outcome = finish(report, r.work, &options, &mut done, emit);
                    requeue(outcome, &mut queue, &mut launching, &options);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                emit(Event::Tick);
                let now = Instant::now();
                let overdue: Vec<u64> = running
                    .iter()
                    .filter(|(_, r)| match interrupted {
                        Some((_, at)) => now >= at + STOP_GRACE,
                        None => r
                            .cancel
                            .file_deadline()
                            .is_some_and(|d| now >= d + STOP_GRACE),
                    })
                    .map(|(slot, _)| *slot)
                    .collect();
                for slot in overdue {
                    let Some(r) = running.remove(&slot) else {
                        continue;
                    };
                    let report = abandon(&ctx, &r);
                    let outcome = finish(report, r.work, &options, &mut done, emit);
                    requeue(outcome, &mut queue, &mut launching, &options);
                }
            }
            // Every worker holds a sender until it has reported, and so do we.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }

    for event in events.try_iter() {
        emit(event);
    }
    let summary = &mut done.summary;
    summary.not_run = total - (summary.passed + summary.failed);
    summary.duration = started.elapsed();
    summary
        .failed_logs
        .sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    done
}

/// What a finished attempt calls for.
enum Next {
    Retry(Attempt),
    Failed,
    Passed,
}

/// Reports an attempt; returns whether it is retried or how the file ended.
fn finish(
    mut report: FileReport,
    work: Attempt,
    options: &DispatchOptions,
    done: &mut Dispatched,
    emit: &mut impl FnMut(Event),
) -> Next {
    report.attempt = work.attempt;
    let failed = report.outcome.is_failure();
    let retry = failed
        && work.attempt <= options.retries
        && done.summary.interrupted_by.is_none()
        && report.outcome != Outcome::Interrupted;
    report.retrying = retry;
    if retry {
        emit(Event::FileFinished(report));
        return Next::Retry(Attempt {
            attempt: work.attempt + 1,
            ..work
        });
    }
    let summary = &mut done.summary;
    *summary.outcomes.entry(report.outcome.name()).or_default() += 1;
    if failed {
        summary.failed += 1;
        summary.failed_logs.push(FailedLog {
            name: report.name.clone(),
            log_path: report.log_path.clone(),
        });
    } else {
        summary.passed += 1;
        if report.is_flaky() {
            summary.flaky += 1;
        }
    }
    done.finished.push((work.file, failed));
    emit(Event::FileFinished(report));
    if failed {
        Next::Failed
    } else {
        Next::Passed
    }
}

/// A retry runs next, before files not yet started; a final failure under
/// `--fail-fast` stops launching.
fn requeue(
    next: Next,
    queue: &mut VecDeque<Attempt>,
    launching: &mut bool,
    options: &DispatchOptions,
) {
    match next {
        Next::Retry(work) => queue.push_front(work),
        Next::Failed if options.fail_fast => *launching = false,
        Next::Failed | Next::Passed => {}
    }
}

/// Reports a file that did not stop within [`STOP_GRACE`] of having to: its VMs are
/// killed (its thread, if it ever returns, is ignored).
fn abandon(ctx: &RunContext, r: &Running) -> FileReport {
    crate::procs::kill_owned_by(r.cancel.id());
    let stop = r.cancel.check().err();
    let (outcome, why) = match &stop {
        Some(Stop::Interrupted { signal }) => {
            (Outcome::Interrupted, format!("interrupted by {signal}"))
        }
        Some(stop) => (Outcome::TimedOut, stop.to_string()),
        None => (Outcome::TimedOut, "timed out".to_string()),
    };
    let log_path = ctx
        .run_dir
        .attempt_log_path(&r.work.file.name, r.work.attempt);
    FileReport {
        name: r.work.file.name.clone(),
        outcome,
        duration: Duration::ZERO,
        subtests: Vec::new(),
        file_error: Some(format!(
            "{why}; the file did not stop within {}s of it, so its VMs were killed",
            STOP_GRACE.as_secs()
        )),
        console_tail: None,
        log_path: log_path.exists().then_some(log_path),
        attempt: r.work.attempt,
        retrying: false,
    }
}

/// Starts an attempt on its own thread; on failure to spawn, returns its report.
fn spawn_file(
    ctx: &Arc<RunContext>,
    work: &Attempt,
    cancel: Cancel,
    slot: u64,
    sender: mpsc::Sender<(u64, FileReport)>,
) -> Result<(), Box<FileReport>> {
    let ctx = Arc::clone(ctx);
    let file = work.file.clone();
    let (index, attempt) = (work.index, work.attempt);
    let spawned = thread::Builder::new()
        .name(format!("lua {}", file.name))
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let started = Instant::now();
            let report = catch_unwind(AssertUnwindSafe(|| {
                crate::lua::run_file(Arc::clone(&ctx), &file, index, attempt, cancel)
            }))
            .unwrap_or_else(|panic| panic_report(&ctx, &file, attempt, started, panic.as_ref()));
            let _ = sender.send((slot, report));
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => Err(Box::new(FileReport {
            name: work.file.name.clone(),
            outcome: Outcome::Error,
            duration: Duration::ZERO,
            subtests: Vec::new(),
            file_error: Some(format!("cannot start a thread for this file: {e}")),
            console_tail: None,
            log_path: None,
            attempt,
            retrying: false,
        })),
    }
}

/// A panic while running a file fails that file, not the run.
fn panic_report(
    ctx: &RunContext,
    file: &TestFile,
    attempt: u32,
    started: Instant,
    panic: &(dyn Any + Send),
) -> FileReport {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let message = format!("internal error: provium panicked while running this file: {what}");
    let log_path = ctx.run_dir.attempt_log_path(&file.name, attempt);
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
        attempt,
        retrying: false,
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
            crate::config::Config::empty(parent),
            Pool::new(PoolMode::Auto),
            Default::default(),
            Default::default(),
        )
    }

    fn options(jobs: usize) -> DispatchOptions {
        DispatchOptions {
            jobs: Some(jobs),
            fail_fast: false,
            retries: 0,
            timeout: None,
        }
    }

    fn files(root: &std::path::Path, bodies: &[(&str, &str)]) -> Vec<TestFile> {
        bodies
            .iter()
            .map(|(name, body)| {
                std::fs::write(root.join(name), body).unwrap();
                TestFile::new(name, root.join(name), root)
            })
            .collect()
    }

    fn dispatch(
        ctx: RunContext,
        files: Vec<TestFile>,
        options: DispatchOptions,
    ) -> (Dispatched, Vec<Event>) {
        let mut events = Vec::new();
        let (_sink, receiver) = mpsc::channel();
        let done = run(files, Arc::new(ctx), options, &receiver, &mut |e| {
            events.push(e)
        });
        (done, events)
    }

    #[test]
    fn a_panic_fails_only_its_file_and_keeps_its_log() {
        let parent = tempfile::tempdir().unwrap();
        let ctx = context(parent.path());
        let file = TestFile::new("x.lua", PathBuf::from("x.lua"), parent.path());
        std::fs::write(ctx.run_dir.log_path("x.lua"), "partial\n").unwrap();
        let payload: Box<dyn Any + Send> = Box::new("boom");
        let report = panic_report(&ctx, &file, 1, Instant::now(), payload.as_ref());
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
        let files = files(
            &root,
            &[("a.lua", "error('no')"), ("b.lua", ""), ("c.lua", "")],
        );
        let options = DispatchOptions {
            fail_fast: true,
            ..options(1)
        };
        let (done, events) = dispatch(context(parent.path()), files, options);
        let summary = done.summary;
        assert_eq!((summary.passed, summary.failed, summary.not_run), (0, 1, 2));
        let started = events
            .iter()
            .filter(|e| matches!(e, Event::FileStarted { .. }))
            .count();
        assert_eq!(started, 1);
        assert_eq!(done.finished.len(), 1);
    }

    #[test]
    fn retries_rerun_a_failing_file_and_mark_a_late_pass_flaky() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("t");
        std::fs::create_dir(&root).unwrap();
        let marker = parent.path().join("ran-once");
        let flaky = format!(
            "local f = io.open({m:?}) if f then f:close() else io.open({m:?}, 'w'):close() error('first time') end",
            m = marker.display().to_string()
        );
        let files = files(
            &root,
            &[("always.lua", "error('never')"), ("flaky.lua", &flaky)],
        );
        let options = DispatchOptions {
            retries: 2,
            ..options(1)
        };
        let (done, events) = dispatch(context(parent.path()), files, options);
        let finished: Vec<(String, u32, bool, &'static str)> = events
            .iter()
            .filter_map(|e| match e {
                Event::FileFinished(r) => {
                    Some((r.name.clone(), r.attempt, r.retrying, r.outcome.name()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            finished,
            [
                ("always.lua".to_string(), 1, true, "failed"),
                ("always.lua".to_string(), 2, true, "failed"),
                ("always.lua".to_string(), 3, false, "failed"),
                ("flaky.lua".to_string(), 1, true, "failed"),
                ("flaky.lua".to_string(), 2, false, "passed"),
            ]
        );
        let summary = done.summary;
        assert_eq!((summary.passed, summary.failed, summary.flaky), (1, 1, 1));
        assert_eq!(summary.outcomes.get("failed"), Some(&1));
    }
}
