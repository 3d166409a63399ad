//! `--json FILE`: the run's events as JSON lines, one object per event, each written
//! and flushed as it arrives — a killed run leaves a valid prefix. The first object
//! carries `"schema": 1`; the fields are documented in docs/json.md, and a change to
//! them bumps [`SCHEMA`].

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::event::{Event, FileReport, Outcome, SubtestReport};
use super::reporter::pool_line;
use super::Sink;
use crate::pool::PoolMode;

/// The version of the event format; bumped by any change to a field.
pub const SCHEMA: u32 = 1;

/// Writes events as JSON lines to `out`.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn write(&mut self, value: Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(&value).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn handle(&mut self, event: &Event) -> io::Result<()> {
        let value = match event {
            Event::RunStarted {
                total_files,
                pool,
                partition,
            } => json!({
                "type": "run_started",
                "schema": SCHEMA,
                "files": total_files,
                "pool": pool_json(pool),
                "partition": partition.as_ref().map(|p| json!({
                    "spec": p.spec,
                    "selected": p.selected,
                    "total": p.total,
                })),
            }),
            Event::FileStarted { name, attempt } => json!({
                "type": "file_started",
                "file": name,
                "attempt": attempt,
            }),
            Event::VmBooted(boot) => json!({
                "type": "vm_booted",
                "file": boot.file,
                "vm": boot.vm,
                "profile": boot.profile,
                "memory_mib": boot.memory_mib,
                "cpus": boot.cpus,
                "boot_ms": millis(boot.boot),
                "accel": boot.accel,
                "fixture": boot.fixture,
            }),
            Event::TestFinished {
                file,
                attempt,
                test,
            } => test_json(file, *attempt, test),
            Event::FileFinished(report) => file_json(report),
            Event::Notice(text) => json!({ "type": "notice", "text": text }),
            Event::Tick => return Ok(()),
            Event::RunFinished(summary) => {
                let mut counts = Map::new();
                for name in Outcome::NAMES {
                    let n = summary.outcomes.get(name).copied().unwrap_or(0);
                    counts.insert(name.to_string(), json!(n));
                }
                json!({
                    "type": "run_finished",
                    "counts": counts,
                    "passed": summary.passed,
                    "failed": summary.failed,
                    "flaky": summary.flaky,
                    "not_run": summary.not_run,
                    "interrupted_by": summary.interrupted_by,
                    "duration_ms": millis(summary.duration),
                })
            }
        };
        self.write(value)
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

fn pool_json(pool: &PoolMode) -> Value {
    match pool {
        PoolMode::Auto => json!({ "mode": "auto" }),
        PoolMode::Fixed { memory_mib, cpus } => json!({
            "mode": "fixed",
            "memory_mib": memory_mib,
            "cpus": cpus,
            "line": pool_line(pool),
        }),
    }
}

fn test_json(file: &str, attempt: u32, test: &SubtestReport) -> Value {
    json!({
        "type": "test_finished",
        "file": file,
        "attempt": attempt,
        "name": test.name,
        "outcome": test.outcome.name(),
        "duration_ms": millis(test.duration),
        "message": message(&test.outcome, test.message.as_deref()),
    })
}

/// A failure's message, or a todo's reason.
fn message(outcome: &Outcome, message: Option<&str>) -> Option<String> {
    match outcome {
        Outcome::Todo { reason } => reason.clone(),
        _ => message.map(str::to_string),
    }
}

fn file_json(report: &FileReport) -> Value {
    json!({
        "type": "file_finished",
        "file": report.name,
        "outcome": report.outcome.name(),
        "duration_ms": millis(report.duration),
        "attempt": report.attempt,
        "attempts": report.attempt,
        "final": !report.retrying,
        "flaky": report.is_flaky(),
        "tests": report.subtests.len(),
        "message": message(&report.outcome, report.file_error.as_deref()),
        "log": report.log_path,
        "console_tail": report.console_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{PartitionInfo, RunSummary, VmBooted};
    use std::time::Duration;

    #[test]
    fn every_event_is_one_json_object_per_line() {
        let mut sink = JsonLines::new(Vec::new());
        let events = [
            Event::RunStarted {
                total_files: 2,
                pool: PoolMode::Auto,
                partition: Some(PartitionInfo {
                    spec: "count:1/2".into(),
                    selected: 2,
                    total: 4,
                }),
            },
            Event::FileStarted {
                name: "a.lua".into(),
                attempt: 1,
            },
            Event::VmBooted(VmBooted {
                file: "a.lua".into(),
                vm: "a.lua#1".into(),
                profile: "default".into(),
                memory_mib: 256,
                cpus: 1,
                boot: Duration::from_millis(3100),
                accel: "tcg".into(),
                fixture: None,
            }),
            Event::TestFinished {
                file: "a.lua".into(),
                attempt: 1,
                test: SubtestReport {
                    name: "t\u{0}<&>".into(),
                    outcome: Outcome::Failed,
                    message: Some("expected 1, got 2".into()),
                    duration: Duration::from_millis(12),
                },
            },
            Event::Tick,
            Event::RunFinished(RunSummary {
                failed: 1,
                outcomes: [("failed", 1)].into_iter().collect(),
                ..RunSummary::default()
            }),
        ];
        for event in &events {
            sink.handle(event).unwrap();
        }
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "run_started",
                "file_started",
                "vm_booted",
                "test_finished",
                "run_finished"
            ]
        );
        assert_eq!(lines[0]["schema"], 1);
        assert_eq!(lines[0]["partition"]["spec"], "count:1/2");
        assert_eq!(lines[2]["boot_ms"], 3100);
        assert_eq!(lines[3]["name"], "t\u{0}<&>");
        assert_eq!(lines[3]["outcome"], "failed");
        assert_eq!(lines[4]["counts"]["failed"], 1);
        assert_eq!(lines[4]["counts"]["timed-out"], 0);
        assert!(
            lines[1].get("schema").is_none(),
            "schema is on the first only"
        );
    }
}
