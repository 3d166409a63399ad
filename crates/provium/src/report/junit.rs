//! `--junit FILE`: JUnit XML as Jenkins, GitLab and GitHub test reporters read it.
//!
//! One `<testsuite>` per file inside one `<testsuites>` root, one `<testcase>` per
//! sub-test; the mapping is documented in docs/output.md ("Reports"). The document is
//! written as files finish and is valid after every write: each suite is written over
//! the root's closing tag, which follows it again; then the root's start tag, written
//! at a fixed width (padded with spaces before its `>`, which XML allows), is
//! rewritten in place with the new totals — so a killed run leaves a valid report
//! whose totals match the suites it holds. At the end the root gets the run's time.
//! Both are positioned writes (`pwrite`): two system calls per file.
//!
//! XML 1.0 cannot carry NUL, the other C0 controls but tab, newline and carriage
//! return, U+FFFE and U+FFFF: they are written visibly (`\x00`, `\u{fffe}`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event as Xml};
use quick_xml::Writer;

use super::attempts::Attempts;
use super::event::{Event, FileReport, Outcome};
use super::text::{first_line, visible};
use super::Sink;

/// The root's closing tag, written after the last suite and written over by the next.
const CLOSE: &[u8] = b"\n</testsuites>\n";

/// Where a report is written: whole buffers at given offsets.
pub trait WriteAt {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
}

impl WriteAt for Vec<u8> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }
}

/// Writes a JUnit XML report to `out` as the run's files finish.
pub struct JunitXml<W: WriteAt> {
    out: W,
    /// Renders suites, indented one level under the root.
    xml: Writer<Vec<u8>>,
    /// Where the root's start tag is, and its fixed width.
    root_at: u64,
    root_width: usize,
    /// Where the root's closing tag is: the next suite goes there.
    close_at: u64,
    totals: Counts,
    attempts: Attempts,
}

/// The counts a `<testsuite>` or the root carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: Duration,
}

impl Counts {
    /// The widest counts there can be: the root's start tag is reserved at their width.
    const WIDEST: Counts = Counts {
        tests: usize::MAX,
        failures: usize::MAX,
        errors: usize::MAX,
        skipped: usize::MAX,
        time: Duration::MAX,
    };

    fn of(cases: &[Case], time: Duration) -> Counts {
        let mut counts = Counts {
            tests: cases.len(),
            time,
            ..Counts::default()
        };
        for case in cases {
            match case.outcome {
                Outcome::Passed => {}
                Outcome::Failed => counts.failures += 1,
                Outcome::Error | Outcome::TimedOut | Outcome::Interrupted => counts.errors += 1,
                Outcome::Todo { .. } => counts.skipped += 1,
            }
        }
        counts
    }

    fn add(&mut self, other: &Counts) {
        self.tests += other.tests;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.time = self.time.saturating_add(other.time);
    }

    /// `name`, the counts and `time` as attributes of `element`.
    fn start<'a>(&self, element: &'a str, name: &str) -> BytesStart<'a> {
        let mut start = BytesStart::new(element);
        start.push_attribute(("name", xml_text(name).as_ref()));
        for (key, value) in [
            ("tests", self.tests),
            ("failures", self.failures),
            ("errors", self.errors),
            ("skipped", self.skipped),
        ] {
            start.push_attribute((key, value.to_string().as_str()));
        }
        start.push_attribute(("time", seconds(self.time).as_str()));
        start
    }
}

/// One `<testcase>`: a sub-test, or the file itself (see [`cases`]).
#[derive(Debug)]
struct Case {
    name: String,
    /// The testcase named after the file rather than a sub-test.
    file_level: bool,
    time: Duration,
    outcome: Outcome,
    /// A failure's message, a todo's reason.
    message: Option<String>,
    /// Failures of this testcase in earlier attempts, in attempt order.
    reruns: Vec<Rerun>,
}

/// A failure of a testcase in an earlier attempt at its file.
#[derive(Debug)]
struct Rerun {
    outcome: Outcome,
    message: Option<String>,
    console: Option<String>,
}

impl<W: WriteAt> JunitXml<W> {
    /// Writes an empty report (a valid document) at the start of `out` and returns
    /// the sink.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut head = Writer::new(Vec::new());
        head.write_event(Xml::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let mut head = head.into_inner();
        head.push(b'\n');
        let root_at = head.len() as u64;
        let root_width = root_tag(&Counts::WIDEST)?.len();
        head.extend_from_slice(&padded(root_tag(&Counts::default())?, root_width));
        head.extend_from_slice(CLOSE);
        out.write_all_at(&head, 0)?;
        // Suites are rendered one level into the root, which this writer then
        // believes it has opened; the root's own tags are written apart.
        let mut xml = Writer::new_with_indent(Vec::new(), b' ', 2);
        xml.write_event(Xml::Start(BytesStart::new("testsuites")))?;
        xml.get_mut().clear();
        Ok(JunitXml {
            out,
            xml,
            root_at,
            root_width,
            close_at: root_at + root_width as u64,
            totals: Counts::default(),
            attempts: Attempts::default(),
        })
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn write_suite(&mut self, report: &FileReport, earlier: &[FileReport]) -> io::Result<()> {
        let cases = cases_with_history(report, earlier);
        let counts = Counts::of(&cases, report.duration);
        render_suite(&mut self.xml, report, &cases, &counts)?;
        let mut suite = std::mem::take(self.xml.get_mut());
        let suite_len = suite.len() as u64;
        suite.extend_from_slice(CLOSE);
        self.out.write_all_at(&suite, self.close_at)?;
        self.close_at += suite_len;
        self.totals.add(&counts);
        self.write_root()
    }

    /// Rewrites the root's start tag with the current totals.
    fn write_root(&mut self) -> io::Result<()> {
        let tag = padded(root_tag(&self.totals)?, self.root_width);
        self.out.write_all_at(&tag, self.root_at)
    }
}

impl<W: WriteAt> Sink for JunitXml<W> {
    fn handle(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::FileFinished(report) => {
                if let Some(earlier) = self.attempts.record(report) {
                    self.write_suite(report, &earlier)?;
                }
            }
            Event::RunFinished(summary) => {
                // The root's time is the run's wall time, not the sum of its files'.
                self.totals.time = summary.duration;
                self.write_root()?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn root_tag(totals: &Counts) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Xml::Start(totals.start("testsuites", "provium")))?;
    Ok(writer.into_inner())
}

/// `tag` (a start tag) widened to `width` with spaces before its `>`.
fn padded(mut tag: Vec<u8>, width: usize) -> Vec<u8> {
    debug_assert!(tag.len() <= width && tag.last() == Some(&b'>'));
    tag.pop();
    tag.resize(width - 1, b' ');
    tag.push(b'>');
    tag
}

/// Whether XML 1.0 can carry `c` (its `Char` production).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

fn xml_text(text: &str) -> std::borrow::Cow<'_, str> {
    visible(text, xml_char)
}

fn seconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

/// A failure's message, or a todo's reason.
fn message(outcome: &Outcome, message: Option<&str>) -> Option<String> {
    match outcome {
        Outcome::Todo { reason } => reason.clone(),
        _ => message.map(str::to_string),
    }
}

/// The testcases of one attempt: one per sub-test, and one named after the file when
/// the file has no sub-tests (its whole result), raised an error outside them, or
/// called `todo()` at file level. That file-level testcase takes the file's outcome
/// (the events carry no separate outcome for the file's own error) and the file's
/// time outside its sub-tests.
fn cases_of(report: &FileReport) -> Vec<Case> {
    let mut cases: Vec<Case> = report
        .subtests
        .iter()
        .map(|test| Case {
            name: test.name.clone(),
            file_level: false,
            time: test.duration,
            outcome: test.outcome.clone(),
            message: message(&test.outcome, test.message.as_deref()),
            reruns: Vec::new(),
        })
        .collect();
    let file_todo = matches!(report.outcome, Outcome::Todo { .. });
    if cases.is_empty() || report.file_error.is_some() || file_todo {
        let inside: Duration = report.subtests.iter().map(|t| t.duration).sum();
        cases.push(Case {
            name: report.name.clone(),
            file_level: true,
            time: report.duration.saturating_sub(inside),
            outcome: report.outcome.clone(),
            message: message(&report.outcome, report.file_error.as_deref()),
            reruns: Vec::new(),
        });
    }
    cases
}

/// The final attempt's testcases, each with its failures in the earlier attempts: the
/// n-th sub-test of a name matches the n-th of that name; a failure with no match
/// (a sub-test that did not run again, the file's own error) goes to the file-level
/// testcase, added (passed) when the final attempt has none.
fn cases_with_history(report: &FileReport, earlier: &[FileReport]) -> Vec<Case> {
    let mut cases = cases_of(report);
    for attempt in earlier {
        let console = attempt.console_tail.as_ref().map(|tail| tail.join("\n"));
        let mut seen: HashMap<(bool, String), usize> = HashMap::new();
        for case in cases_of(attempt) {
            let key = (case.file_level, case.name.clone());
            let nth = *seen.entry(key).and_modify(|n| *n += 1).or_insert(0);
            if !case.outcome.is_failure() {
                continue;
            }
            let target = cases
                .iter()
                .enumerate()
                .filter(|(_, c)| c.file_level == case.file_level && c.name == case.name)
                .nth(nth)
                .or_else(|| cases.iter().enumerate().find(|(_, c)| c.file_level))
                .map(|(i, _)| i);
            let target = target.unwrap_or_else(|| {
                cases.push(Case {
                    name: report.name.clone(),
                    file_level: true,
                    time: Duration::ZERO,
                    outcome: Outcome::Passed,
                    message: None,
                    reruns: Vec::new(),
                });
                cases.len() - 1
            });
            cases[target].reruns.push(Rerun {
                outcome: case.outcome,
                message: case.message,
                console: console.clone(),
            });
        }
    }
    cases
}

fn render_suite(
    xml: &mut Writer<Vec<u8>>,
    report: &FileReport,
    cases: &[Case],
    counts: &Counts,
) -> io::Result<()> {
    xml.write_event(Xml::Start(counts.start("testsuite", &report.name)))?;
    let mut properties = Vec::new();
    if report.attempt > 1 {
        properties.push(("attempts", report.attempt.to_string()));
    }
    if let Some(log) = &report.log_path {
        properties.push(("log", log.display().to_string()));
    }
    if !properties.is_empty() {
        xml.create_element("properties")
            .write_inner_content(|xml| {
                for (name, value) in &properties {
                    xml.create_element("property")
                        .with_attribute(("name", *name))
                        .with_attribute(("value", xml_text(value).as_ref()))
                        .write_empty()?;
                }
                Ok(())
            })?;
    }
    for case in cases {
        render_case(xml, &report.name, case)?;
    }
    if let Some(tail) = &report.console_tail {
        text_element(xml, "system-out", &[], Some(&tail.join("\n")))?;
    }
    xml.write_event(Xml::End(BytesEnd::new("testsuite")))
}

fn render_case(xml: &mut Writer<Vec<u8>>, file: &str, case: &Case) -> io::Result<()> {
    let mut start = BytesStart::new("testcase");
    start.push_attribute(("classname", xml_text(file).as_ref()));
    start.push_attribute(("name", xml_text(&case.name).as_ref()));
    start.push_attribute(("time", seconds(case.time).as_str()));
    if case.outcome == Outcome::Passed && case.reruns.is_empty() {
        return xml.write_event(Xml::Empty(start));
    }
    xml.write_event(Xml::Start(start))?;
    let message = case.message.as_deref();
    match &case.outcome {
        Outcome::Passed => {}
        Outcome::Todo { reason } => {
            let attributes: Vec<(&str, &str)> = match reason {
                Some(reason) => vec![("message", reason.as_str())],
                None => Vec::new(),
            };
            text_element(xml, "skipped", &attributes, None)?;
        }
        failure => {
            let element = if *failure == Outcome::Failed {
                "failure"
            } else {
                "error"
            };
            let summary = message.map(first_line).unwrap_or(failure.name());
            let attributes = [("message", summary), ("type", failure.name())];
            text_element(xml, element, &attributes, message)?;
        }
    }
    let failed_in_the_end = case.outcome.is_failure();
    for rerun in &case.reruns {
        // Maven Surefire's convention: reruns of a testcase that still fails, flaky
        // failures of one that passed in the end.
        let element = match (failed_in_the_end, rerun.outcome == Outcome::Failed) {
            (true, true) => "rerunFailure",
            (true, false) => "rerunError",
            (false, true) => "flakyFailure",
            (false, false) => "flakyError",
        };
        let summary = rerun
            .message
            .as_deref()
            .map(first_line)
            .unwrap_or(rerun.outcome.name());
        let mut start = BytesStart::new(element);
        start.push_attribute(("message", xml_text(summary).as_ref()));
        start.push_attribute(("type", rerun.outcome.name()));
        xml.write_event(Xml::Start(start))?;
        if let Some(message) = &rerun.message {
            text_element(xml, "stackTrace", &[], Some(message))?;
        }
        if let Some(console) = &rerun.console {
            text_element(xml, "system-out", &[], Some(console))?;
        }
        xml.write_event(Xml::End(BytesEnd::new(element)))?;
    }
    xml.write_event(Xml::End(BytesEnd::new("testcase")))
}

/// `<element attributes>text</element>`, or an empty element without text.
fn text_element(
    xml: &mut Writer<Vec<u8>>,
    element: &str,
    attributes: &[(&str, &str)],
    text: Option<&str>,
) -> io::Result<()> {
    let mut start = BytesStart::new(element);
    for (key, value) in attributes {
        start.push_attribute((*key, xml_text(value).as_ref()));
    }
    match text.filter(|t| !t.is_empty()) {
        Some(text) => {
            xml.write_event(Xml::Start(start))?;
            xml.write_event(Xml::Text(BytesText::new(&xml_text(text))))?;
            xml.write_event(Xml::End(BytesEnd::new(element)))
        }
        None => xml.write_event(Xml::Empty(start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{RunSummary, SubtestReport};

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
        let mut sink = JunitXml::new(Vec::new()).unwrap();
        for event in events {
            sink.handle(event).unwrap();
        }
        String::from_utf8(sink.into_inner()).unwrap()
    }

    /// What follows the root's start tag.
    fn body(text: &str) -> &str {
        text.split_once(" >\n").unwrap().1
    }

    #[test]
    fn an_empty_run_is_a_valid_document_with_zero_totals() {
        let text = render(&[]);
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"provium\" tests=\"0\" failures=\"0\" errors=\"0\" skipped=\"0\" time=\"0.000\" "), "{text}");
        assert!(text.ends_with(" >\n</testsuites>\n"), "{text}");
    }

    #[test]
    fn suites_and_cases_map_outcomes() {
        let mut failing = report(
            "k.lua",
            Outcome::Error,
            vec![
                sub("basic", Outcome::Passed, None),
                sub("deny", Outcome::Failed, Some("expected 0\ngot -13")),
                sub("boot", Outcome::Error, Some("VM k.lua#1 broke")),
                sub(
                    "later",
                    Outcome::Todo {
                        reason: Some("6.9".into()),
                    },
                    None,
                ),
            ],
        );
        failing.file_error = Some("command failed".into());
        failing.console_tail = Some(vec!["[ 1.0] one".into(), "[ 2.0] two".into()]);
        let text = render(&[
            Event::FileFinished(failing),
            Event::FileFinished(report("boot.lua", Outcome::Passed, vec![])),
            Event::RunFinished(RunSummary {
                duration: Duration::from_secs(7),
                ..RunSummary::default()
            }),
        ]);
        let expected = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<testsuites name=\"provium\" tests=\"6\" failures=\"1\" errors=\"2\" skipped=\"1\" time=\"7.000\"";
        assert!(text.starts_with(expected), "{text}");
        let body = body(&text);
        assert_eq!(
            body,
            r#"  <testsuite name="k.lua" tests="5" failures="1" errors="2" skipped="1" time="1.500">
    <testcase classname="k.lua" name="basic" time="0.250"/>
    <testcase classname="k.lua" name="deny" time="0.250">
      <failure message="expected 0" type="failed">expected 0
got -13</failure>
    </testcase>
    <testcase classname="k.lua" name="boot" time="0.250">
      <error message="VM k.lua#1 broke" type="error">VM k.lua#1 broke</error>
    </testcase>
    <testcase classname="k.lua" name="later" time="0.250">
      <skipped message="6.9"/>
    </testcase>
    <testcase classname="k.lua" name="k.lua" time="0.500">
      <error message="command failed" type="error">command failed</error>
    </testcase>
    <system-out>[ 1.0] one
[ 2.0] two</system-out>
  </testsuite>
  <testsuite name="boot.lua" tests="1" failures="0" errors="0" skipped="0" time="1.500">
    <testcase classname="boot.lua" name="boot.lua" time="1.500"/>
  </testsuite>
</testsuites>
"#
        );
    }

    #[test]
    fn unrepresentable_characters_are_visible_and_markup_escaped() {
        let text = render(&[Event::FileFinished(report(
            "x\u{1}.lua",
            Outcome::Failed,
            vec![sub(
                "t\u{0}",
                Outcome::Failed,
                Some("a<b & ]]> \u{0} \u{fffe} \u{fffd} \r end"),
            )],
        ))]);
        assert!(text.contains(r#"<testsuite name="x\x01.lua""#), "{text}");
        assert!(
            text.contains(r#"name="t\x00""#),
            "control characters in attributes: {text}"
        );
        assert!(
            text.contains(
                "type=\"failed\">a&lt;b &amp; ]]&gt; \\x00 \\u{fffe} \u{fffd} &#13; end</failure>"
            ),
            "{text}"
        );
    }

    #[test]
    fn timeouts_and_interrupts_are_errors_of_their_type() {
        let mut spin = report("spin.lua", Outcome::TimedOut, vec![]);
        spin.file_error = Some("timed out after 1s".into());
        let stopped = report("stop.lua", Outcome::Interrupted, vec![]);
        let text = render(&[Event::FileFinished(spin), Event::FileFinished(stopped)]);
        assert!(text.contains(
            r#"<error message="timed out after 1s" type="timed-out">timed out after 1s</error>"#
        ));
        assert!(text.contains(r#"<error message="interrupted" type="interrupted"/>"#));
    }

    #[test]
    fn a_flaky_file_records_its_earlier_failures_on_the_matching_cases() {
        let mut first = report(
            "f.lua",
            Outcome::Failed,
            vec![
                sub("a", Outcome::Passed, None),
                sub("b", Outcome::Failed, Some("first try\nmore")),
            ],
        );
        first.retrying = true;
        first.console_tail = Some(vec!["boot".into()]);
        let mut second = report("f.lua", Outcome::TimedOut, vec![]);
        second.attempt = 2;
        second.retrying = true;
        second.file_error = Some("timed out".into());
        let mut last = report(
            "f.lua",
            Outcome::Passed,
            vec![
                sub("a", Outcome::Passed, None),
                sub("b", Outcome::Passed, None),
            ],
        );
        last.attempt = 3;
        let text = render(&[
            Event::FileFinished(first),
            Event::FileFinished(second),
            Event::FileFinished(last),
        ]);
        let body = body(&text);
        assert_eq!(
            body,
            r#"  <testsuite name="f.lua" tests="3" failures="0" errors="0" skipped="0" time="1.500">
    <properties>
      <property name="attempts" value="3"/>
    </properties>
    <testcase classname="f.lua" name="a" time="0.250"/>
    <testcase classname="f.lua" name="b" time="0.250">
      <flakyFailure message="first try" type="failed">
        <stackTrace>first try
more</stackTrace>
        <system-out>boot</system-out>
      </flakyFailure>
    </testcase>
    <testcase classname="f.lua" name="f.lua" time="0.000">
      <flakyError message="timed out" type="timed-out">
        <stackTrace>timed out</stackTrace>
      </flakyError>
    </testcase>
  </testsuite>
</testsuites>
"#
        );
    }

    #[test]
    fn a_file_failing_after_retries_records_reruns() {
        let mut first = report("r.lua", Outcome::Error, vec![]);
        first.retrying = true;
        first.file_error = Some("VM broke".into());
        let mut last = report("r.lua", Outcome::Failed, vec![]);
        last.attempt = 2;
        last.file_error = Some("assertion failed".into());
        let text = render(&[Event::FileFinished(first), Event::FileFinished(last)]);
        assert!(text.contains(
            "<failure message=\"assertion failed\" type=\"failed\">assertion failed</failure>\n      <rerunError message=\"VM broke\" type=\"error\">"
        ), "{text}");
        assert!(text.contains("tests=\"1\" failures=\"1\" errors=\"0\""));
    }

    #[test]
    fn the_document_parses_after_every_write_with_totals_matching_its_suites() {
        let mut sink = JunitXml::new(Vec::new()).unwrap();
        let mut retried = report("r.lua", Outcome::Failed, vec![]);
        retried.retrying = true;
        let events = [
            Event::FileFinished(report("a.lua", Outcome::Passed, vec![])),
            Event::FileFinished(retried),
            Event::FileFinished(report(
                "b.lua",
                Outcome::Failed,
                vec![
                    sub("x", Outcome::Failed, Some("no")),
                    sub("y", Outcome::Passed, None),
                ],
            )),
            Event::FileFinished(report("r.lua", Outcome::Passed, vec![])),
            Event::RunFinished(RunSummary::default()),
        ];
        for (i, event) in events.iter().enumerate() {
            sink.handle(event).unwrap();
            let text = std::str::from_utf8(&sink.out).unwrap();
            let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let root = doc.root_element();
            let suites: Vec<_> = root
                .children()
                .filter(|n| n.has_tag_name("testsuite"))
                .collect();
            let sum: usize = suites
                .iter()
                .map(|s| s.attribute("tests").unwrap().parse::<usize>().unwrap())
                .sum();
            assert_eq!(
                root.attribute("tests").unwrap(),
                sum.to_string(),
                "after event {i}"
            );
            let expected_suites = [1, 1, 2, 3, 3][i];
            assert_eq!(suites.len(), expected_suites, "after event {i}\n{text}");
        }
    }

    #[test]
    fn the_root_tag_keeps_its_width() {
        let narrow = padded(root_tag(&Counts::default()).unwrap(), 200);
        assert_eq!(narrow.len(), 200);
        assert!(narrow.ends_with(b" >"));
        let widest = root_tag(&Counts::WIDEST).unwrap();
        assert_eq!(padded(widest.clone(), widest.len()), widest);
    }
}
