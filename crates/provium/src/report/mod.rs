//! Reporting: the run event contract, the terminal reporter, and the machine-readable
//! reports (`--json`, `--junit`, `--ktap`), each a consumer of the same events.

mod attempts;
pub mod event;
pub mod json;
pub mod junit;
pub mod ktap;
pub mod reporter;
mod text;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use event::{
    Event, FailedLog, FileReport, Outcome, PartitionInfo, RunSummary, SubtestReport, VmBooted,
};
pub use reporter::{Reporter, Style};

/// A consumer of the run's events, written as they arrive.
pub trait Sink {
    fn handle(&mut self, event: &Event) -> io::Result<()>;
}

impl<W: Write> Sink for Reporter<W> {
    fn handle(&mut self, event: &Event) -> io::Result<()> {
        Reporter::handle(self, event)
    }
}

/// A report file that cannot be opened.
///
/// The I/O error is part of the message and deliberately not its `source()`: the CLI
/// prints an error's whole chain, which would repeat it.
#[derive(Debug, Error)]
#[error("cannot create the {what} report {}: {io}", .path.display())]
pub struct ReportError {
    pub what: &'static str,
    pub path: PathBuf,
    pub io: io::Error,
}

/// The machine-readable reports a run writes besides the terminal's.
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    pub junit: Option<PathBuf>,
    /// `-` is stdout.
    pub json: Option<PathBuf>,
    pub ktap: Option<PathBuf>,
}

impl ReportFiles {
    /// Creates every report file (before the run starts, so a bad path fails at once).
    pub fn open(&self) -> Result<Vec<Box<dyn Sink>>, ReportError> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(path) = &self.json {
            let out: Box<dyn Write> = if path == Path::new("-") {
                Box::new(io::stdout())
            } else {
                Box::new(BufWriter::new(create("JSON", path)?))
            };
            sinks.push(Box::new(json::JsonLines::new(out)));
        }
        if let Some(path) = &self.junit {
            let sink = junit::JunitXml::new(create("JUnit", path)?)
                .map_err(|io| error("JUnit", path, io))?;
            sinks.push(Box::new(sink));
        }
        if let Some(path) = &self.ktap {
            let out = BufWriter::new(create("KTAP", path)?);
            sinks.push(Box::new(ktap::Ktap::new(out)));
        }
        Ok(sinks)
    }
}

fn create(what: &'static str, path: &Path) -> Result<File, ReportError> {
    File::create(path).map_err(|io| error(what, path, io))
}

fn error(what: &'static str, path: &Path, io: io::Error) -> ReportError {
    ReportError {
        what,
        path: path.to_path_buf(),
        io,
    }
}
