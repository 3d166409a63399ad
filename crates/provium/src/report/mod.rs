//! Reporting: the run event contract and the reporter that renders it on the terminal.

pub mod event;
pub mod reporter;

pub use event::{Event, FailedLog, FileReport, Outcome, RunSummary, SubtestReport};
pub use reporter::{Reporter, Style};
