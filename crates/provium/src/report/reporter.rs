//! Renders [`Event`]s in the SPEC §1 output shape: each file's block written whole,
//! colours and a live status line only on a terminal without `NO_COLOR`.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::event::{Event, FileReport, FileStatus, RunSummary, SubtestStatus};
use crate::schedule::pool::PoolMode;

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

/// Writes the run's output to `out`; the only writer of stdout during a run.
pub struct Reporter<W: Write> {
    out: W,
    style: Style,
    total_files: usize,
    done: usize,
    running: usize,
    started: Instant,
    status_drawn_at: Option<Instant>,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, style: Style) -> Self {
        Reporter {
            out,
            style,
            total_files: 0,
            done: 0,
            running: 0,
            started: Instant::now(),
            status_drawn_at: None,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn handle(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted { total_files, pool } => {
                self.total_files = *total_files;
                self.started = Instant::now();
                let mut text = String::from("provium test\n\n");
                if let Some(line) = pool_line(pool) {
                    text.push_str(&line);
                    text.push_str("\n\n");
                }
                self.write_block(&text)?;
            }
            Event::FileStarted { .. } => {
                self.running += 1;
                self.draw_status(true)?;
            }
            Event::FileFinished(report) => {
                self.running = self.running.saturating_sub(1);
                self.done += 1;
                let block = render_file(report, self.style.color);
                self.write_block(&block)?;
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
        let line = format!(
            "{ERASE_LINE}  {}/{} done, {} running, {:.1}s",
            self.done,
            self.total_files,
            self.running,
            self.started.elapsed().as_secs_f64()
        );
        self.out.write_all(line.as_bytes())?;
        self.out.flush()?;
        self.status_drawn_at = Some(Instant::now());
        Ok(())
    }
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
    let head = match &report.status {
        FileStatus::Passed => format!("{} ({count}{time})", paint("ok", GREEN, color)),
        FileStatus::Failed => format!("{} ({time})", paint("FAIL", RED, color)),
        FileStatus::Todo { reason } => format!("{} ({time})", todo_word(reason, color)),
    };
    let mut out = format!("  {} ... {head}\n", report.name);
    for subtest in &report.subtests {
        let status = match &subtest.status {
            SubtestStatus::Passed => paint("ok", GREEN, color),
            SubtestStatus::Todo { reason } => todo_word(reason, color),
            SubtestStatus::Failed { message } => {
                // Continuation lines of a multi-line message sit under the bullet.
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
    let line = if summary.succeeded() {
        format!("{}: {} passed", paint("ok", GREEN, color), summary.passed)
    } else {
        let mut line = format!(
            "{}: {} passed, {} failed",
            paint("FAIL", RED, color),
            summary.passed,
            summary.failed
        );
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

    fn report(name: &str, status: FileStatus, subtests: Vec<SubtestReport>) -> FileReport {
        FileReport {
            name: name.to_string(),
            status,
            duration: Duration::from_millis(2140),
            subtests,
            file_error: None,
            console_tail: None,
            log_path: None,
        }
    }

    fn sub(name: &str, status: SubtestStatus) -> SubtestReport {
        SubtestReport {
            name: name.to_string(),
            status,
        }
    }

    #[test]
    fn passing_file_without_subtests() {
        let block = render_file(&report("boot.lua", FileStatus::Passed, vec![]), false);
        assert_eq!(block, "  boot.lua ... ok (2.1s)\n");
    }

    #[test]
    fn passing_file_counts_subtests() {
        let subs = vec![
            sub("a", SubtestStatus::Passed),
            sub(
                "b",
                SubtestStatus::Todo {
                    reason: Some("later".into()),
                },
            ),
            sub("c", SubtestStatus::Todo { reason: None }),
        ];
        let block = render_file(&report("t.lua", FileStatus::Passed, subs), false);
        assert_eq!(
            block,
            "  t.lua ... ok (3 tests, 2.1s)\n    · a ... ok\n    · b ... todo: later\n    · c ... todo\n"
        );
        let one = render_file(
            &report(
                "t.lua",
                FileStatus::Passed,
                vec![sub("a", SubtestStatus::Passed)],
            ),
            false,
        );
        assert_eq!(one, "  t.lua ... ok (1 test, 2.1s)\n    · a ... ok\n");
    }

    #[test]
    fn failing_file_shows_error_and_console_tail() {
        let mut r = report(
            "k.lua",
            FileStatus::Failed,
            vec![
                sub("basic", SubtestStatus::Passed),
                sub(
                    "deny",
                    SubtestStatus::Failed {
                        message: "expected 0, got -13".into(),
                    },
                ),
            ],
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
        let block = render_file(&report("a.lua", FileStatus::Passed, vec![]), true);
        assert_eq!(block, "  a.lua ... \x1b[32mok\x1b[0m (2.1s)\n");
        let failed = render_file(&report("a.lua", FileStatus::Failed, vec![]), true);
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
            })
            .unwrap();
        reporter
            .handle(&Event::FileStarted {
                name: "a.lua".into(),
            })
            .unwrap();
        reporter.handle(&Event::Tick).unwrap();
        reporter
            .handle(&Event::FileFinished(report(
                "a.lua",
                FileStatus::Passed,
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
            })
            .unwrap();
        reporter
            .handle(&Event::FileStarted {
                name: "a.lua".into(),
            })
            .unwrap();
        reporter
            .handle(&Event::FileFinished(report(
                "a.lua",
                FileStatus::Passed,
                vec![],
            )))
            .unwrap();
        let text = String::from_utf8(reporter.into_inner()).unwrap();
        assert!(text.contains("0/2 done, 1 running"), "{text:?}");
        assert!(
            text.contains(&format!("running, 0.0s{ERASE_LINE}  a.lua")),
            "{text:?}"
        );
        assert!(text.ends_with("1/2 done, 0 running, 0.0s"), "{text:?}");
    }
}
