//! Reporting: the run event contract and the reporter that renders it on stdout.

pub mod event;
pub mod reporter;

pub use event::{
    Event, FailedLog, FileReport, FileStatus, RunSummary, SubtestReport, SubtestStatus,
};
pub use reporter::{Reporter, Style};
