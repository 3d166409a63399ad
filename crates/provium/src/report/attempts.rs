//! `--retries` for reports written per file: a file's failed attempts are held until
//! its final attempt arrives, so the file is written once, with its history.

use std::collections::HashMap;

use super::event::FileReport;

/// Earlier attempts of the files being retried, by file name.
#[derive(Debug, Default)]
pub struct Attempts {
    earlier: HashMap<String, Vec<FileReport>>,
}

impl Attempts {
    /// Records an attempt. For a file's final attempt, returns the attempts before it
    /// in order (none when it ran once); `None` while another attempt follows.
    pub fn record(&mut self, report: &FileReport) -> Option<Vec<FileReport>> {
        if report.retrying {
            self.earlier
                .entry(report.name.clone())
                .or_default()
                .push(report.clone());
            return None;
        }
        Some(self.earlier.remove(&report.name).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use std::time::Duration;

    fn attempt(name: &str, attempt: u32, retrying: bool) -> FileReport {
        FileReport {
            name: name.into(),
            outcome: if retrying {
                Outcome::Failed
            } else {
                Outcome::Passed
            },
            duration: Duration::ZERO,
            subtests: Vec::new(),
            file_error: None,
            console_tail: None,
            log_path: None,
            attempt,
            retrying,
        }
    }

    #[test]
    fn earlier_attempts_come_back_with_the_final_one_per_file() {
        let mut attempts = Attempts::default();
        assert!(attempts.record(&attempt("a.lua", 1, true)).is_none());
        assert!(attempts.record(&attempt("b.lua", 1, true)).is_none());
        assert!(attempts.record(&attempt("a.lua", 2, true)).is_none());
        let a = attempts.record(&attempt("a.lua", 3, false)).unwrap();
        assert_eq!(a.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
        assert!(attempts
            .record(&attempt("c.lua", 1, false))
            .unwrap()
            .is_empty());
        let b = attempts.record(&attempt("b.lua", 2, false)).unwrap();
        assert_eq!(b.len(), 1);
        assert!(attempts.earlier.is_empty());
    }
}
