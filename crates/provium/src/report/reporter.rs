//! Renders [`Event`]s in the SPEC §1 output shape: each file's block written whole,
//! colours and a live status line only on a terminal without `NO_COLOR`.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::event::{Event, FileReport, Outcome, PartitionInfo, RunSummary};
use crate::pool::PoolMode;

/// How decorated the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// `ok` green, `FAIL` red, `todo` yellow.
    pub color: bool,
    /// One status line (done/total, running, elapsed), erased before each result.
    pub live_status: bool,
}

impl Style {
    /// No escape codes at all.
    pub const PLAIN: Style = Style {
        color: false,
        live_status: false,
    };

    /// Decorations only when stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Style {
        // SAFETY: isatty(3) only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        if tty && !no_color {
            Style {
                color: true,
                live_status: true,
            }
        } else {
            Style::PLAIN
        }
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";
const ERASE_LINE: &str = "\r\x1b[2K";
/// Redrawing faster than this only burns terminal bandwidth.
const STATUS_REFRESH: Duration = Duration::from_millis(200);

/// Writes the run's output to `out`, and notices to `notices` (stderr); the only
/// writer of the terminal during a run, so a notice never lands on the status line.
pub struct Reporter<W: Write> {
    out: W,
    notices: Box<dyn Write + Send>,
    style: Style,
    total_files: usize,
    done: usize,
    /// The files running now and since when, in start order.
    running: Vec<(String, Instant)>,
    started: Instant,
    status_drawn_at: Option<Instant>,
    /// How wide the status line may be (the terminal's width).
    width: usize,
}

impl<W: Write> Reporter<W> {
    /// A reporter writing notices to stderr.
    pub fn new(out: W, style: Style) -> Self {
        Self::with_notices(out, Box::new(io::stderr()), style)
    }

    pub fn with_notices(out: W, notices: Box<dyn Write + Send>, style: Style) -> Self {
        Reporter {
            out,
            notices,
            style,
            total_files: 0,
            done: 0,
            running: Vec::new(),
            started: Instant::now(),
            status_drawn_at: None,
            width: terminal_width(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn handle(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted {
                total_files,
                pool,
                partition,
            } => {
                self.total_files = *total_files;
                self.started = Instant::now();
                let mut text = String::from("provium test\n\n");
                if let Some(line) = pool_line(pool) {
                    text.push_str(&line);
                    text.push_str("\n\n");
                }
                if let Some(partition) = partition {
                    text.push_str(&partition_line(partition));
                    text.push_str("\n\n");
                }
                self.write_block(&text)?;
            }
            Event::FileStarted { name, .. } => {
                self.running.push((name.clone(), Instant::now()));
                self.draw_status(true)?;
            }
            Event::FileFinished(report) => {
                if let Some(i) = self.running.iter().position(|(n, _)| *n == report.name) {
                    self.running.remove(i);
                }
                if !report.retrying {
                    self.done += 1;
                    let block = render_file(report, self.style.color);
                    self.write_block(&block)?;
                }
                self.draw_status(true)?;
            }
            // Sub-tests print with their file's block; boots are for machine reports.
            Event::TestFinished { .. } | Event::VmBooted(_) => {}
            Event::Notice(text) => {
                // Both streams usually reach one terminal: the status line goes first.
                if self.status_drawn_at.take().is_some() {
                    self.out.write_all(ERASE_LINE.as_bytes())?;
                    self.out.flush()?;
                }
                self.notices.write_all(format!("{text}\n").as_bytes())?;
                self.notices.flush()?;
                self.draw_status(true)?;
            }
            Event::Tick => self.draw_status(false)?,
            Event::RunFinished(summary) => {
                let text = render_summary(summary, self.style.color);
                self.write_block(&text)?;
            }
        }
        Ok(())
    }

    /// Writes `text` in one call after erasing the status line, then flushes, so a
    /// block never mixes with anything else on the terminal.
    fn write_block(&mut self, text: &str) -> io::Result<()> {
        if self.status_drawn_at.take().is_some() {
            self.out.write_all(ERASE_LINE.as_bytes())?;
        }
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }

    fn draw_status(&mut self, force: bool) -> io::Result<()> {
        if !self.style.live_status || self.done >= self.total_files {
            return Ok(());
        }
        if !force
            && self
                .status_drawn_at
                .is_some_and(|at| at.elapsed() < STATUS_REFRESH)
        {
            return Ok(());
        }
        let line = status_line(
            self.done,
            self.total_files,
            &self.running,
            self.started.elapsed(),
            self.width,
        );
        // Not over an interactive shell (`vm:shell()`), which has the terminal.
        let out = &mut self.out;
        let drawn = crate::tty::unless_held(|| {
            out.write_all(format!("{ERASE_LINE}{line}").as_bytes())?;
            out.flush()
        });
        if let Some(result) = drawn {
            result?;
            self.status_drawn_at = Some(Instant::now());
        }
        Ok(())
    }
}

/// The terminal's width in columns (80 when stdout is no terminal).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass; nothing else is touched.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// `  3/10 done, 2 running, 12.4s: slow.lua 45s, b.lua 3s` — the running files with
/// how long each has run, the longest first (a hang shows), cut to `width` columns.
pub fn status_line(
    done: usize,
    total: usize,
    running: &[(String, Instant)],
    elapsed: Duration,
    width: usize,
) -> String {
    let mut line = format!(
        "  {done}/{total} done, {} running, {:.1}s",
        running.len(),
        elapsed.as_secs_f64()
    );
    let mut files: Vec<(&str, Duration)> = running
        .iter()
        .map(|(name, since)| (name.as_str(), since.elapsed()))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.1));
    for (i, (name, ran)) in files.iter().enumerate() {
        let part = format!(
            "{}{name} {}s",
            if i == 0 { ": " } else { ", " },
            ran.as_secs()
        );
        if line.chars().count() + part.chars().count() > width.saturating_sub(1) {
            let rest = files.len() - i;
            let more = format!(", +{rest} more");
            if line.chars().count() + more.chars().count() < width {
                line.push_str(&more);
            }
            break;
        }
        line.push_str(&part);
    }
    line
}

/// `partition count:2/4: 13 of 50 files`.
pub fn partition_line(partition: &PartitionInfo) -> String {
    format!(
        "partition {}: {} of {} files",
        partition.spec, partition.selected, partition.total
    )
}

/// `resource pool: 4096M memory, 8 CPUs`; a dimension not given is `unlimited`.
pub fn pool_line(pool: &PoolMode) -> Option<String> {
    match pool {
        PoolMode::Auto => None,
        PoolMode::Fixed { memory_mib, cpus } => {
            let memory = match memory_mib {
                Some(mib) => format!("{mib}M memory"),
                None => "unlimited memory".to_string(),
            };
            let cpus = match cpus {
                Some(1) => "1 CPU".to_string(),
                Some(n) => format!("{n} CPUs"),
                None => "unlimited CPUs".to_string(),
            };
            Some(format!("resource pool: {memory}, {cpus}"))
        }
    }
}

fn paint(text: &str, color: &str, enabled: bool) -> String {
    if enabled {
        format!("{color}{text}{RESET}")
    } else {
        text.to_string()
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn todo_word(reason: &Option<String>, color: bool) -> String {
    match reason {
        Some(reason) => format!("{}: {reason}", paint("todo", YELLOW, color)),
        None => paint("todo", YELLOW, color),
    }
}

/// One file's whole block, newline-terminated.
pub fn render_file(report: &FileReport, color: bool) -> String {
    let time = seconds(report.duration);
    let count = match report.subtests.len() {
        0 => String::new(),
        1 => "1 test, ".to_string(),
        n => format!("{n} tests, "),
    };
    let flaky = if report.is_flaky() {
        format!(", flaky: passed on attempt {}", report.attempt)
    } else {
        String::new()
    };
    let head = match &report.outcome {
        Outcome::Passed => format!("{} ({count}{time}{flaky})", paint("ok", GREEN, color)),
        Outcome::Failed | Outcome::Error | Outcome::TimedOut | Outcome::Interrupted => {
            format!("{} ({time})", paint("FAIL", RED, color))
        }
        Outcome::Todo { reason } => format!("{} ({time}{flaky})", todo_word(reason, color)),
    };
    let mut out = format!("  {} ... {head}\n", report.name);
    for subtest in &report.subtests {
        let status = match &subtest.outcome {
            Outcome::Passed => paint("ok", GREEN, color),
            Outcome::Todo { reason } => todo_word(reason, color),
            Outcome::Failed | Outcome::Error | Outcome::TimedOut | Outcome::Interrupted => {
                // Continuation lines of a multi-line message sit under the bullet.
                let message = subtest.message.as_deref().unwrap_or_default();
                let message = message.trim_end().replace('\n', "\n      ");
                format!("{}: {message}", paint("FAIL", RED, color))
            }
        };
        out.push_str(&format!("    · {} ... {status}\n", subtest.name));
    }
    if let Some(error) = &report.file_error {
        for line in error.trim_end().lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    if let Some(tail) = &report.console_tail {
        out.push_str("    --- console (last 20 lines) ---\n");
        for line in tail {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// The `Failed test logs:` section (when anything failed) and the summary line.
pub fn render_summary(summary: &RunSummary, color: bool) -> String {
    let mut out = String::from("\n");
    if !summary.failed_logs.is_empty() {
        out.push_str("Failed test logs:\n");
        for failed in &summary.failed_logs {
            let target = match &failed.log_path {
                Some(path) => path.display().to_string(),
                None => "(no log: it could not be written)".to_string(),
            };
            out.push_str(&format!("  {:<40} → {}\n", failed.name, target));
        }
        out.push('\n');
    }
    let flaky = if summary.flaky > 0 {
        format!(", {} flaky", summary.flaky)
    } else {
        String::new()
    };
    let line = if summary.succeeded() {
        format!(
            "{}: {} passed{flaky}",
            paint("ok", GREEN, color),
            summary.passed
        )
    } else {
        let mut line = format!(
            "{}: {} passed, {} failed",
            paint("FAIL", RED, color),
            summary.passed,
            summary.failed
        );
        line.push_str(&flaky);
        if summary.not_run > 0 {
            line.push_str(&format!(", {} not run", summary.not_run));
        }
        line
    };
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{FailedLog, SubtestReport};
    use std::path::PathBuf;

    fn report(name: &str, outcome: Outcome, subtests: Vec<SubtestReport>) -> FileReport {
        FileReport {
            name: name.to_string(),
            outcome,
            duration: Duration::from_millis(2140),
            subtests,
            file_error: None,
            console_tail: None,
            log_path: None,
            attempt: 1,
            retrying: false,
        }
    }

    fn sub(name: &str, outcome: Outcome) -> SubtestReport {
        let message = outcome
            .is_failure()
            .then(|| "expected 0, got -13".to_string());
        SubtestReport {
            name: name.to_string(),
            outcome,
            message,
            duration: Duration::from_millis(5),
        }
    }

    #[test]
    fn passing_file_without_subtests() {
        let block = render_file(&report("boot.lua", Outcome::Passed, vec![]), false);
        assert_eq!(block, "  boot.lua ... ok (2.1s)\n");
    }

    #[test]
    fn passing_file_counts_subtests() {
        let subs = vec![
            sub("a", Outcome::Passed),
            sub(
                "b",
                Outcome::Todo {
                    reason: Some("later".into()),
                },
            ),
            sub("c", Outcome::Todo { reason: None }),
        ];
        let block = render_file(&report("t.lua", Outcome::Passed, subs), false);
        assert_eq!(
            block,
            "  t.lua ... ok (3 tests, 2.1s)\n    · a ... ok\n    · b ... todo: later\n    · c ... todo\n"
        );
        let one = render_file(
            &report("t.lua", Outcome::Passed, vec![sub("a", Outcome::Passed)]),
            false,
        );
        assert_eq!(one, "  t.lua ... ok (1 test, 2.1s)\n    · a ... ok\n");
    }

    #[test]
    fn failing_file_shows_error_and_console_tail() {
        let mut r = report(
            "k.lua",
            Outcome::Failed,
            vec![sub("basic", Outcome::Passed), sub("deny", Outcome::Failed)],
        );
        r.file_error = Some("command failed (exit 1): cat /x\nno such file".into());
        r.console_tail = Some(vec!["[    2.001] hello".into()]);
        assert_eq!(
            render_file(&r, false),
            "  k.lua ... FAIL (2.1s)\n    · basic ... ok\n    · deny ... FAIL: expected 0, got -13\n    command failed (exit 1): cat /x\n    no such file\n    --- console (last 20 lines) ---\n    [    2.001] hello\n"
        );
    }

    #[test]
    fn colours_only_when_enabled() {
        let block = render_file(&report("a.lua", Outcome::Passed, vec![]), true);
        assert_eq!(block, "  a.lua ... \x1b[32mok\x1b[0m (2.1s)\n");
        let failed = render_file(&report("a.lua", Outcome::Failed, vec![]), true);
        assert!(failed.contains("\x1b[31mFAIL\x1b[0m"));
    }

    #[test]
    fn summary_lines() {
        let ok = RunSummary {
            passed: 3,
            ..RunSummary::default()
        };
        assert_eq!(render_summary(&ok, false), "\nok: 3 passed\n");
        let failed = RunSummary {
            passed: 2,
            failed: 1,
            not_run: 4,
            failed_logs: vec![FailedLog {
                name: "x.lua".into(),
                log_path: Some(PathBuf::from("/r/x.lua.log")),
            }],
            interrupted_by: None,
            ..RunSummary::default()
        };
        assert_eq!(
            render_summary(&failed, false),
            format!(
                "\nFailed test logs:\n  {:<40} → /r/x.lua.log\n\nFAIL: 2 passed, 1 failed, 4 not run\n",
                "x.lua"
            )
        );
    }

    #[test]
    fn pool_line_wording() {
        let both = PoolMode::Fixed {
            memory_mib: Some(4096),
            cpus: Some(8),
        };
        assert_eq!(
            pool_line(&both).unwrap(),
            "resource pool: 4096M memory, 8 CPUs"
        );
        let mem_only = PoolMode::Fixed {
            memory_mib: Some(512),
            cpus: None,
        };
        assert_eq!(
            pool_line(&mem_only).unwrap(),
            "resource pool: 512M memory, unlimited CPUs"
        );
        assert_eq!(pool_line(&PoolMode::Auto), None);
    }

    #[test]
    fn plain_reporter_writes_no_escape_codes() {
        let mut reporter = Reporter::new(Vec::new(), Style::PLAIN);
        reporter
            .handle(&Event::RunStarted {
                total_files: 1,
                pool: PoolMode::Auto,
                partition: None,
            })
            .unwrap();
        reporter
            .handle(&Event::FileStarted {
                name: "a.lua".into(),
                attempt: 1,
            })
            .unwrap();
        reporter.handle(&Event::Tick).unwrap();
        reporter
            .handle(&Event::FileFinished(report(
                "a.lua",
                Outcome::Passed,
                vec![],
            )))
            .unwrap();
        reporter
            .handle(&Event::RunFinished(RunSummary {
                passed: 1,
                ..RunSummary::default()
            }))
            .unwrap();
        let text = String::from_utf8(reporter.into_inner()).unwrap();
        assert_eq!(
            text,
            "provium test\n\n  a.lua ... ok (2.1s)\n\nok: 1 passed\n"
        );
    }

    #[test]
    fn live_status_is_erased_before_each_block() {
        let style = Style {
            color: true,
            live_status: true,
        };
        let mut reporter = Reporter::new(Vec::new(), style);
        reporter
            .handle(&Event::RunStarted {
                total_files: 2,
                pool: PoolMode::Auto,
                partition: None,
            })
            .unwrap();
        reporter
            .handle(&Event::FileStarted {
                name: "a.lua".into(),
                attempt: 1,
            })
            .unwrap();
        reporter
            .handle(&Event::FileFinished(report(
                "a.lua",
                Outcome::Passed,
                vec![],
            )))
            .unwrap();
        let text = String::from_utf8(reporter.into_inner()).unwrap();
        assert!(
            text.contains("0/2 done, 1 running, 0.0s: a.lua 0s"),
            "{text:?}"
        );
        assert!(
            text.contains(&format!("a.lua 0s{ERASE_LINE}  a.lua ... ")),
            "{text:?}"
        );
        assert!(text.ends_with("1/2 done, 0 running, 0.0s"), "{text:?}");
    }

    #[test]
    fn the_status_line_names_the_longest_running_files_first_and_fits() {
        let now = Instant::now();
        let running = vec![
            ("quick.lua".to_string(), now),
            (
                "slow.lua".to_string(),
                now.checked_sub(Duration::from_secs(45)).unwrap(),
            ),
        ];
        assert_eq!(
            status_line(3, 10, &running, Duration::from_millis(12_400), 80),
            "  3/10 done, 2 running, 12.4s: slow.lua 45s, quick.lua 0s"
        );
        assert_eq!(
            status_line(3, 10, &running, Duration::from_millis(12_400), 48),
            "  3/10 done, 2 running, 12.4s: slow.lua 45s"
        );
        let narrow = status_line(3, 10, &running, Duration::from_millis(12_400), 56);
        assert_eq!(
            narrow,
            "  3/10 done, 2 running, 12.4s: slow.lua 45s, +1 more"
        );
    }
    #[test]
    fn errors_and_timeouts_print_as_fail_in_the_seed_format() {
        for outcome in [Outcome::Error, Outcome::TimedOut, Outcome::Interrupted] {
            let r = report("v.lua", outcome.clone(), vec![sub("s", outcome.clone())]);
            assert_eq!(
                render_file(&r, false),
                "  v.lua ... FAIL (2.1s)\n    · s ... FAIL: expected 0, got -13\n",
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn notices_go_to_their_stream_after_erasing_the_status_line() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let notices = Shared::default();
        let style = Style {
            color: false,
            live_status: true,
        };
        let mut reporter = Reporter::with_notices(Vec::new(), Box::new(notices.clone()), style);
        reporter
            .handle(&Event::RunStarted {
                total_files: 1,
                pool: PoolMode::Auto,
                partition: None,
            })
            .unwrap();
        reporter
            .handle(&Event::FileStarted {
                name: "a.lua".into(),
                attempt: 1,
            })
            .unwrap();
        reporter
            .handle(&Event::Notice("provium: KVM is unusable".into()))
            .unwrap();
        let out = String::from_utf8(reporter.into_inner()).unwrap();
        let err = String::from_utf8(notices.0.lock().unwrap().clone()).unwrap();
        assert_eq!(err, "provium: KVM is unusable\n");
        // The status line was erased before the notice, then drawn again.
        assert!(
            out.ends_with(&format!(
                "a.lua 0s{ERASE_LINE}{ERASE_LINE}  0/1 done, 1 running, 0.0s: a.lua 0s"
            )),
            "{out:?}"
        );
    }

    #[test]
    fn flaky_files_and_partitions() {
        let mut r = report("f.lua", Outcome::Passed, vec![]);
        r.attempt = 2;
        assert_eq!(
            render_file(&r, false),
            "  f.lua ... ok (2.1s, flaky: passed on attempt 2)\n"
        );
        let summary = RunSummary {
            passed: 10,
            flaky: 1,
            ..RunSummary::default()
        };
        assert_eq!(
            render_summary(&summary, false),
            "\nok: 10 passed, 1 flaky\n"
        );
        let mut retried = report("f.lua", Outcome::Failed, vec![]);
        retried.retrying = true;
        let mut reporter = Reporter::new(Vec::new(), Style::PLAIN);
        reporter.handle(&Event::FileFinished(retried)).unwrap();
        assert_eq!(
            reporter.into_inner(),
            b"",
            "a retried attempt prints nothing"
        );
        let partition = PartitionInfo {
            spec: "count:2/4".into(),
            selected: 13,
            total: 50,
        };
        assert_eq!(
            partition_line(&partition),
            "partition count:2/4: 13 of 50 files"
        );
    }
}
