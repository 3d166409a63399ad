//! `--ktap FILE`: KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst), as
//! kselftest and KUnit print it and KernelCI parses it.
//!
//! The plan counts the run's files; each file is one test, numbered in completion
//! order and written (then flushed) when its final attempt ends. A file with sub-tests
//! is a nested block indented 4 spaces, as KUnit prints it: `KTAP version 1`,
//! `# Subtest: <file>`, its plan, a result line per sub-test, then the file's own
//! result line back at the top level. Messages, a file's console tail and its log are
//! `# ` diagnostic lines placed before the result line they concern. The mapping and
//! the name rules are documented in docs/output.md ("Reports"); `scripts/ktap-check`
//! runs the kernel's own parser on a report.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::attempts::Attempts;
use super::event::{Event, FileReport, Outcome, RunSummary};
use super::reporter::partition_line;
use super::text::visible;
use super::Sink;

/// Indentation of a nested block (KUnit's; the specification's example uses 2).
const INDENT: &str = "    ";

/// Phrases after which the kernel's parser (`kunit_parser.py`, `KTAP_END`) stops
/// reading a log anywhere in a line. Written with their first `:` escaped, so a
/// console tail holding one cannot cut the report short.
const PARSER_STOPS: [&str; 3] = [
    "List of all partitions:",
    "Kernel panic - not syncing: VFS:",
    "reboot: System halted",
];

/// The test a file's error outside its `test()` blocks is, in a file with sub-tests.
const OUTSIDE_TESTS: &str = "outside test()";

/// Writes a KTAP report to `out` as the run's files finish.
pub struct Ktap<W: Write> {
    out: W,
    /// Files written so far: the last one's number.
    written: usize,
    attempts: Attempts,
}

impl<W: Write> Ktap<W> {
    pub fn new(out: W) -> Self {
        Ktap {
            out,
            written: 0,
            attempts: Attempts::default(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Sink for Ktap<W> {
    fn handle(&mut self, event: &Event) -> io::Result<()> {
        let text = match event {
            Event::RunStarted {
                total_files,
                partition,
                ..
            } => {
                let mut text = format!("KTAP version 1\n1..{total_files}\n");
                if let Some(partition) = partition {
                    diagnostic(&mut text, "", &partition_line(partition));
                }
                text
            }
            Event::FileFinished(report) => match self.attempts.record(report) {
                Some(earlier) => {
                    self.written += 1;
                    render_file(report, &earlier, self.written)
                }
                None => return Ok(()),
            },
            Event::Notice(notice) => {
                let mut text = String::new();
                for line in notice.lines() {
                    diagnostic(&mut text, "", line);
                }
                text
            }
            Event::RunFinished(summary) => render_totals(summary),
            Event::FileStarted { .. }
            | Event::VmBooted(_)
            | Event::TestFinished { .. }
            | Event::Tick => return Ok(()),
        };
        self.write(&text)
    }
}

/// One file: its nested block (when it has sub-tests), its diagnostics, its result.
fn render_file(report: &FileReport, earlier: &[FileReport], number: usize) -> String {
    let name = ktap_name(&report.name);
    let mut out = String::new();
    let indent = if report.subtests.is_empty() {
        // No block: the file's result line is the whole test, its error included.
        if let Some(error) = &report.file_error {
            labelled(&mut out, "", "", report.outcome.name(), error);
        }
        ""
    } else {
        render_block(&mut out, report, &name);
        INDENT
    };
    for attempt in earlier {
        render_attempt(&mut out, indent, attempt);
    }
    if report.is_flaky() {
        diagnostic(
            &mut out,
            indent,
            &format!("flaky: passed on attempt {}", report.attempt),
        );
    }
    if let Some(tail) = &report.console_tail {
        diagnostic(&mut out, indent, "console tail:");
        for line in tail {
            diagnostic(&mut out, indent, &format!("  {line}"));
        }
    }
    if let Some(log) = &report.log_path {
        diagnostic(&mut out, indent, &format!("log: {}", log.display()));
    }
    result_line(&mut out, "", &report.outcome, number, &name);
    out
}

/// The nested block of a file with sub-tests. The file's own error is one more test
/// in it, [`OUTSIDE_TESTS`]: parsers count the leaves of the tree (the kernel's does),
/// so a failure on the file's result line alone, under passing sub-tests, would not
/// count.
fn render_block(out: &mut String, report: &FileReport, name: &str) {
    let tests = report.subtests.len() + usize::from(report.file_error.is_some());
    let _ = writeln!(out, "{INDENT}KTAP version 1");
    let _ = writeln!(out, "{INDENT}# Subtest: {name}");
    let _ = writeln!(out, "{INDENT}1..{tests}");
    for (i, test) in report.subtests.iter().enumerate() {
        let mut test_name = ktap_name(&test.name);
        // The kernel's parser takes a result line bearing its block's name for the
        // end of the block.
        if test_name == name {
            test_name.push_str(" (sub-test)");
        }
        if let (true, Some(message)) = (test.outcome.is_failure(), &test.message) {
            labelled(out, INDENT, "", test.outcome.name(), message);
        }
        result_line(out, INDENT, &test.outcome, i + 1, &test_name);
    }
    if let Some(error) = &report.file_error {
        labelled(out, INDENT, "", report.outcome.name(), error);
        result_line(out, INDENT, &report.outcome, tests, OUTSIDE_TESTS);
    }
}

/// An earlier, failed attempt at a file: its outcome and each failure in it.
fn render_attempt(out: &mut String, indent: &str, attempt: &FileReport) {
    diagnostic(
        out,
        indent,
        &format!("attempt {}: {}", attempt.attempt, attempt.outcome.name()),
    );
    let failures = attempt
        .subtests
        .iter()
        .filter(|t| t.outcome.is_failure())
        .map(|t| (t.name.as_str(), t.message.as_deref()))
        .chain(
            attempt
                .file_error
                .as_deref()
                .map(|error| (attempt.name.as_str(), Some(error))),
        );
    for (name, message) in failures {
        labelled(out, indent, "  ", &ktap_name(name), message.unwrap_or(""));
    }
}

/// `ok N name`, `not ok N name`, with the directive an outcome calls for.
fn result_line(out: &mut String, indent: &str, outcome: &Outcome, number: usize, name: &str) {
    let result = if outcome.is_failure() { "not ok" } else { "ok" };
    let directive = match outcome {
        Outcome::Passed | Outcome::Failed => String::new(),
        Outcome::Todo { reason: None } => " # SKIP".to_string(),
        Outcome::Todo {
            reason: Some(reason),
        } => format!(" # SKIP {}", one_line(reason)),
        Outcome::TimedOut => " # TIMEOUT".to_string(),
        Outcome::Error => " # ERROR".to_string(),
        Outcome::Interrupted => " # ERROR interrupted".to_string(),
    };
    let _ = writeln!(out, "{indent}{result} {number} {name}{directive}");
}

/// `# label: first line` (after `lead`), then the message's other lines indented
/// under it — so no line of a message can read as a `# Subtest:` header.
fn labelled(out: &mut String, indent: &str, lead: &str, label: &str, message: &str) {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or("");
    diagnostic(out, indent, &format!("{lead}{label}: {first}"));
    for line in lines {
        diagnostic(out, indent, &format!("{lead}  {line}"));
    }
}

/// One `# ` diagnostic line.
fn diagnostic(out: &mut String, indent: &str, text: &str) {
    let _ = writeln!(out, "{indent}# {}", ktap_text(text));
}

/// The kselftest totals line (files, not sub-tests), and what did not run.
fn render_totals(summary: &RunSummary) -> String {
    let count = |name: &str| summary.outcomes.get(name).copied().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:{}",
        count("passed"),
        count("failed"),
        count("todo"),
        count("error") + count("timed-out") + count("interrupted"),
    );
    if summary.not_run > 0 {
        let _ = writeln!(out, "# not run: {} file(s)", summary.not_run);
    }
    if let Some(signal) = summary.interrupted_by {
        let _ = writeln!(out, "# interrupted by {signal}");
    }
    out
}

/// Text on one line: control characters but tab escaped (`\x1b`), and the phrases
/// that stop the kernel's parser defused.
fn ktap_text(text: &str) -> String {
    let mut text = visible(text, |c| c == '\t' || !c.is_control()).into_owned();
    for stop in PARSER_STOPS {
        if text.contains(stop) {
            text = text.replace(stop, &stop.replacen(':', "\\x3a", 1));
        }
    }
    text
}

/// Text on one line with its line breaks turned into spaces.
fn one_line(text: &str) -> String {
    ktap_text(&text.replace(['\n', '\r'], " "))
}

/// A test name as KTAP allows it on a result line: one line, no `#` (it would start
/// a directive: written `_`), no surrounding space, not starting with `- ` (which
/// TAP reads as a separator), never empty. Inner spaces are kept: a description may
/// be any words.
fn ktap_name(name: &str) -> String {
    let name = one_line(&name.replace('\t', " ")).replace('#', "_");
    let name = name.trim();
    match name {
        "" => "unnamed".to_string(),
        _ if name.starts_with("- ") => format!("_{}", &name[1..]),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolMode;
    use crate::report::event::{PartitionInfo, SubtestReport};
    use std::time::Duration;

    fn report(name: &str, outcome: Outcome, subtests: Vec<SubtestReport>) -> FileReport {
        FileReport {
            name: name.to_string(),
            outcome,
            duration: Duration::from_millis(1500),
            subtests,
            file_error: None,
            console_tail: None,
            log_path: None,
            attempt: 1,
            retrying: false,
        }
    }

    fn sub(name: &str, outcome: Outcome, message: Option<&str>) -> SubtestReport {
        SubtestReport {
            name: name.to_string(),
            outcome,
            message: message.map(str::to_string),
            duration: Duration::from_millis(250),
        }
    }

    fn render(events: &[Event]) -> String {
        let mut sink = Ktap::new(Vec::new());
        for event in events {
            sink.handle(event).unwrap();
        }
        String::from_utf8(sink.into_inner()).unwrap()
    }

    #[test]
    fn files_nest_their_subtests_and_diagnostics_precede_results() {
        let mut access = report(
            "access.lua",
            Outcome::Failed,
            vec![
                sub("basic allow", Outcome::Passed, None),
                sub("deny", Outcome::Failed, Some("expected 0\ngot -13")),
                sub(
                    "later",
                    Outcome::Todo {
                        reason: Some("6.9".into()),
                    },
                    None,
                ),
            ],
        );
        access.file_error = Some("command failed".into());
        access.console_tail = Some(vec!["[ 1.0] reboot: System halted".into()]);
        access.log_path = Some("/r/access.lua.log".into());
        let mut spin = report("spin.lua", Outcome::TimedOut, vec![]);
        spin.file_error = Some("timed out after 1s".into());
        let text = render(&[
            Event::RunStarted {
                total_files: 4,
                pool: PoolMode::Auto,
                partition: Some(PartitionInfo {
                    spec: "count:1/2".into(),
                    selected: 4,
                    total: 8,
                }),
            },
            Event::FileFinished(access),
            Event::Notice("provium: KVM is unusable".into()),
            Event::FileFinished(spin),
            Event::FileFinished(report(
                "wip.lua",
                Outcome::Todo {
                    reason: Some("not\nyet".into()),
                },
                vec![],
            )),
            Event::FileFinished(report("boot.lua", Outcome::Passed, vec![])),
            Event::RunFinished(RunSummary {
                outcomes: [("passed", 1), ("failed", 1), ("timed-out", 1), ("todo", 1)]
                    .into_iter()
                    .collect(),
                ..RunSummary::default()
            }),
        ]);
        assert_eq!(
            text,
            "KTAP version 1
1..4
# partition count:1/2: 4 of 8 files
    KTAP version 1
    # Subtest: access.lua
    1..4
    ok 1 basic allow
    # failed: expected 0
    #   got -13
    not ok 2 deny
    ok 3 later # SKIP 6.9
    # failed: command failed
    not ok 4 outside test()
    # console tail:
    #   [ 1.0] reboot\\x3a System halted
    # log: /r/access.lua.log
not ok 1 access.lua
# provium: KVM is unusable
# timed-out: timed out after 1s
not ok 2 spin.lua # TIMEOUT
ok 3 wip.lua # SKIP not yet
ok 4 boot.lua
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:1
"
        );
    }

    #[test]
    fn earlier_attempts_are_diagnostics_of_the_final_one() {
        let mut first = report(
            "f.lua",
            Outcome::Error,
            vec![sub("a", Outcome::Error, Some("VM broke"))],
        );
        first.retrying = true;
        let mut last = report(
            "f.lua",
            Outcome::Passed,
            vec![sub("a", Outcome::Passed, None)],
        );
        last.attempt = 2;
        let text = render(&[Event::FileFinished(first), Event::FileFinished(last)]);
        assert_eq!(
            text,
            "    KTAP version 1
    # Subtest: f.lua
    1..1
    ok 1 a
    # attempt 1: error
    #   a: VM broke
    # flaky: passed on attempt 2
ok 1 f.lua
"
        );
    }

    #[test]
    fn names_are_made_fit_for_a_result_line() {
        assert_eq!(ktap_name("open # 2"), "open _ 2");
        assert_eq!(ktap_name("  two\nlines\t "), "two lines");
        assert_eq!(ktap_name("nul\0"), "nul\\x00");
        assert_eq!(ktap_name("- dash"), "_ dash");
        assert_eq!(ktap_name(" "), "unnamed");
        let same = render(&[Event::FileFinished(report(
            "a.lua",
            Outcome::Passed,
            vec![sub("a.lua", Outcome::Passed, None)],
        ))]);
        assert!(
            same.contains("    ok 1 a.lua (sub-test)\nok 1 a.lua\n"),
            "{same}"
        );
    }

    #[test]
    fn errors_and_interrupts_carry_their_directive() {
        let text = render(&[
            Event::FileFinished(report("e.lua", Outcome::Error, vec![])),
            Event::FileFinished(report("i.lua", Outcome::Interrupted, vec![])),
            Event::RunFinished(RunSummary {
                not_run: 3,
                interrupted_by: Some("SIGINT"),
                ..RunSummary::default()
            }),
        ]);
        assert!(text.contains("not ok 1 e.lua # ERROR\n"));
        assert!(text.contains("not ok 2 i.lua # ERROR interrupted\n"));
        assert!(text.ends_with("# not run: 3 file(s)\n# interrupted by SIGINT\n"));
    }
}
